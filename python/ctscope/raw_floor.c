/* The benchmark floor: read every entry of a pinned hash map with BPF_MAP_LOOKUP_BATCH
 * and decode nothing. Prints "<entries> <seconds>". Built by `ctscope bench` when a C
 * compiler is present. Usage: raw_floor PIN [BATCH] */
#include <errno.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long bpf(int cmd, union bpf_attr *a) { return syscall(__NR_bpf, cmd, a, sizeof(*a)); }

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: raw_floor PIN [BATCH]\n"); return 2; }
    uint32_t batch = argc > 2 ? (uint32_t)atoi(argv[2]) : 4096;
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.pathname = (uint64_t)(uintptr_t)argv[1];
    a.file_flags = BPF_F_RDONLY;
    int fd = bpf(BPF_OBJ_GET, &a);
    if (fd < 0) { perror("BPF_OBJ_GET"); return 1; }
    struct bpf_map_info info;
    memset(&info, 0, sizeof(info));
    memset(&a, 0, sizeof(a));
    a.info.bpf_fd = fd; a.info.info_len = sizeof(info); a.info.info = (uint64_t)(uintptr_t)&info;
    if (bpf(BPF_OBJ_GET_INFO_BY_FD, &a) < 0) { perror("BPF_OBJ_GET_INFO_BY_FD"); return 1; }
    size_t ks = info.key_size, vs = info.value_size;
    char *keys = malloc(ks * batch), *vals = malloc(vs * batch);
    uint64_t cursor_in = 0, cursor_out = 0; /* bucket index; key_size bytes are copied */
    char *cin = calloc(1, ks < 8 ? 8 : ks), *cout = calloc(1, ks < 8 ? 8 : ks);
    (void)cursor_in; (void)cursor_out;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t total = 0;
    int first = 1;
    for (;;) {
        memset(&a, 0, sizeof(a));
        a.batch.map_fd = fd;
        a.batch.in_batch = first ? 0 : (uint64_t)(uintptr_t)cin;
        a.batch.out_batch = (uint64_t)(uintptr_t)cout;
        a.batch.keys = (uint64_t)(uintptr_t)keys;
        a.batch.values = (uint64_t)(uintptr_t)vals;
        a.batch.count = batch;
        long r = bpf(BPF_MAP_LOOKUP_BATCH, &a);
        if (r < 0 && errno == ENOSPC) { batch *= 2; keys = realloc(keys, ks * batch); vals = realloc(vals, vs * batch); continue; }
        total += a.batch.count;
        if (r < 0) {
            if (errno == ENOENT) break;
            perror("BPF_MAP_LOOKUP_BATCH"); return 1;
        }
        memcpy(cin, cout, ks < 8 ? 8 : ks);
        first = 0;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%llu %.6f\n", (unsigned long long)total, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
