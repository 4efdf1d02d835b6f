from ctscope.cli import main

main()
