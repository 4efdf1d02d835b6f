// Keeps changing the last_seen of a fixed set of CT entries, as a live datapath would,
// for ctscope's race tests (tests/test_act.py). Plain bpf(2), builds with gcc alone.
//
//   refresh_writer PIN KEYFILE KEY_SIZE VALUE_SIZE CTR
//
// KEYFILE: the keys, back to back. Each round, for every key: BPF_MAP_LOOKUP_ELEM, then
// last_seen (u64 at value offset 8) += 1 and BPF_MAP_UPDATE_ELEM with BPF_EXIST, so the
// entry stays expired but is no longer the value a scan saw. CTR: a file the writer maps
// and keeps {completed rounds, updates, failed updates} in (u64 each). Prints "ready"
// after the first round; stops on SIGTERM.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }
static long sys_bpf(int cmd, union bpf_attr *a) { return syscall(__NR_bpf, cmd, a, sizeof(*a)); }

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: refresh_writer PIN KEYFILE KEY_SIZE VALUE_SIZE CTR\n");
        return 2;
    }
    size_t ks = strtoul(argv[3], 0, 10), vs = strtoul(argv[4], 0, 10);
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.pathname = (uint64_t)(unsigned long)argv[1];
    int fd = sys_bpf(BPF_OBJ_GET, &a);
    if (fd < 0) { perror("BPF_OBJ_GET"); return 2; }
    int kf = open(argv[2], O_RDONLY);
    struct stat st;
    if (kf < 0 || fstat(kf, &st) < 0) { perror("keyfile"); return 2; }
    size_t n = st.st_size / ks;
    uint8_t *keys = malloc(st.st_size + 1);
    if (read(kf, keys, st.st_size) != st.st_size) { perror("read keyfile"); return 2; }
    int cf = open(argv[5], O_RDWR | O_CREAT, 0600);
    if (cf < 0 || ftruncate(cf, 24) < 0) { perror("ctr"); return 2; }
    volatile uint64_t *ctr = mmap(0, 24, PROT_READ | PROT_WRITE, MAP_SHARED, cf, 0);
    if (ctr == MAP_FAILED) { perror("mmap"); return 2; }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    uint8_t *val = malloc(vs);
    int said = 0;
    while (!stop) {
        for (size_t i = 0; i < n && !stop; i++) {
            memset(&a, 0, sizeof(a));
            a.map_fd = fd;
            a.key = (uint64_t)(unsigned long)(keys + i * ks);
            a.value = (uint64_t)(unsigned long)val;
            if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &a) < 0) { ctr[2]++; continue; }
            uint64_t ls;
            memcpy(&ls, val + 8, 8);
            ls += 1;
            memcpy(val + 8, &ls, 8);
            a.flags = BPF_EXIST;
            if (sys_bpf(BPF_MAP_UPDATE_ELEM, &a) < 0) ctr[2]++; else ctr[1]++;
        }
        ctr[0]++;
        if (!said) { printf("ready\n"); fflush(stdout); said = 1; }
    }
    printf("rounds=%llu updates=%llu failures=%llu\n", (unsigned long long)ctr[0], (unsigned long long)ctr[1],
           (unsigned long long)ctr[2]);
    return 0;
}
