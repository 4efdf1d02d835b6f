"""Repairing pinned CT maps, one module per job (every acting path: dry run by default, the
pin's write lock, a backup first, SIGKILL-safe):

    check.py    would libbpf reuse this pin? (read-only; `ctscope check`)
    resize.py   crash-safe resize in Felix's `<pin>_old` convention (`ctscope resize`)
    delta.py    finishing a `--keep-old` migration (`ctscope resize --delta`)
    recover.py  Felix's rule for an interrupted migration (`--recover`, `check --recover`)
    restore.py  a backup's entries back into a pin (`ctscope restore`)
    backups.py  backup file names, target checks, partial files of killed runs
    common.py   what they share: the pin's path, the lock, crash hooks, capacity, Result

Deleting entries (get/delete/clean/flush) is `ctscope.act`: table edits, not map repairs.
The Calico facts they judge by (layouts, pin names, `<pin>_old`) come from the Rust core.
"""
