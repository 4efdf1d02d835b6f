// LD_PRELOAD shim for tests/test_security.py: logs every bpf(2) call a process makes
// through libc's syscall() (how ctscope's Rust core and aya issue them) to the file
// named by CTSCOPE_BPF_AUDIT, one line per call: "cmd=<bpf_cmd> file_flags=<n>"
// (file_flags: BPF_OBJ_GET's open flags, 0 for other commands). The call itself is
// passed through unchanged.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

long syscall(long nr, ...) {
    static long (*real)(long, ...);
    static int log_fd = -2;
    va_list ap;
    va_start(ap, nr);
    long a[6];
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    if (nr == SYS_bpf) {
        if (log_fd == -2) {
            const char *p = getenv("CTSCOPE_BPF_AUDIT");
            log_fd = p ? open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644) : -1;
        }
        if (log_fd >= 0) {
            const union bpf_attr *attr = (const union bpf_attr *)a[1];
            unsigned flags = ((int)a[0] == BPF_OBJ_GET && attr) ? attr->file_flags : 0;
            char line[64];
            int n = snprintf(line, sizeof(line), "cmd=%d file_flags=%u\n", (int)a[0], flags);
            if (write(log_fd, line, n) < 0) { /* nothing to do */ }
        }
    }
    return real(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}
