// A user-space CT writer that reopens its pin, as a reloaded program or Felix does, for
// ctscope's resize-under-writers tests (tests/test_resize_writers.py). Plain bpf(2), gcc only.
//
//   pin_writer PIN NKEYS AFTER_MS OUT
//
// Writes keys 0..NKEYS-1 (UDP 192.168.0.0+i -> 172.31.0.1, ports 5353/53) round after round,
// each value stamped with last_seen = CLOCK_MONOTONIC now and the round number (a2b.packets).
// After every 32 writes it opens PIN again; when the pin names another map (resize swapped it)
// it switches to that map and keeps writing for AFTER_MS ms more, then stops. Prints "ready"
// after its first full round; at exit writes every key's LAST written value to OUT (NKEYS
// records of key 16 + value 88 bytes) and prints "rounds=R after_swap_rounds=A swapped=S".
// SIGTERM stops it early (OUT is still written).
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define KS 16
#define VS 88

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static long sys_bpf(int cmd, union bpf_attr *a) { return syscall(__NR_bpf, cmd, a, sizeof(*a)); }

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int obj_get(const char *path) {
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.pathname = (uint64_t)(unsigned long)path;
    return sys_bpf(BPF_OBJ_GET, &a);
}

static uint32_t map_id(int fd) {
    struct bpf_map_info info;
    union bpf_attr a;
    memset(&info, 0, sizeof(info));
    memset(&a, 0, sizeof(a));
    a.info.bpf_fd = fd;
    a.info.info_len = sizeof(info);
    a.info.info = (uint64_t)(unsigned long)&info;
    if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a) < 0) return 0;
    return info.id;
}

static void make_key(uint8_t *k, uint64_t i) {
    uint32_t proto = 17, a = 0xC0A80000u + (uint32_t)i, b = 0xAC1F0001u;
    uint16_t pa = 5353, pb = 53;
    memcpy(k, &proto, 4);
    k[4] = a >> 24; k[5] = a >> 16; k[6] = a >> 8; k[7] = a;
    k[8] = b >> 24; k[9] = b >> 16; k[10] = b >> 8; k[11] = b;
    memcpy(k + 12, &pa, 2);
    memcpy(k + 14, &pb, 2);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: pin_writer PIN NKEYS AFTER_MS OUT\n");
        return 2;
    }
    const char *pin = argv[1], *out = argv[4];
    uint64_t nkeys = strtoull(argv[2], 0, 10), after_ns = strtoull(argv[3], 0, 10) * 1000000ull;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int fd = obj_get(pin);
    if (fd < 0) {
        fprintf(stderr, "pin_writer: BPF_OBJ_GET %s: %s\n", pin, strerror(errno));
        return 2;
    }
    uint32_t id = map_id(fd);
    uint8_t *last = calloc(nkeys, KS + VS);
    uint64_t rounds = 0, after_rounds = 0, writes = 0, swapped_at = 0, failures = 0;
    for (;;) {
        for (uint64_t i = 0; i < nkeys; i++) {
            uint8_t *k = last + i * (KS + VS), *v = k + KS;
            make_key(k, i);
            memset(v, 0, VS);
            uint64_t now = mono_ns(), round = rounds + 1;
            memcpy(v + 8, &now, 8);           // last_seen
            memcpy(v + 24, &round, 8);        // a2b.bytes: the round
            uint32_t pk = (uint32_t)round;
            memcpy(v + 32, &pk, 4);           // a2b.packets
            union bpf_attr a;
            memset(&a, 0, sizeof(a));
            a.map_fd = fd;
            a.key = (uint64_t)(unsigned long)k;
            a.value = (uint64_t)(unsigned long)v;
            a.flags = BPF_ANY;
            if (sys_bpf(BPF_MAP_UPDATE_ELEM, &a) < 0) failures++;
            if ((++writes & 31) == 0 && !swapped_at) {
                int nfd = obj_get(pin);
                if (nfd >= 0 && map_id(nfd) != id && map_id(nfd) != 0) {
                    close(fd);
                    fd = nfd;
                    id = map_id(fd);
                    swapped_at = mono_ns();
                } else if (nfd >= 0) {
                    close(nfd);
                }
            }
        }
        rounds++;
        if (swapped_at) after_rounds++;
        if (rounds == 1) {
            printf("ready\n");
            fflush(stdout);
        }
        if (stop || (swapped_at && mono_ns() - swapped_at >= after_ns)) break;
    }
    FILE *f = fopen(out, "wb");
    if (!f || fwrite(last, KS + VS, nkeys, f) != nkeys || fclose(f) != 0) {
        perror("pin_writer: OUT");
        return 2;
    }
    printf("rounds=%llu after_swap_rounds=%llu swapped=%d failures=%llu\n", (unsigned long long)rounds,
           (unsigned long long)after_rounds, swapped_at != 0, (unsigned long long)failures);
    return 0;
}
