// A conntrack-like writer for ctscope's churn tests (tests/test_churn.py) and the soak
// bench (benches/soak.py). Plain bpf(2), no libbpf, so it builds with gcc alone.
//
//   churn_writer fill PIN KIND START COUNT   write keys START..START+COUNT-1 of KIND
//                                             (s = stable TCP keys, c = churn UDP keys)
//   churn_writer run  PIN MODE LIVE START CTR [RATE]
//       MODE window: for j = START, START+1, ...: insert churn key j, delete churn key
//                    j-LIVE (a sliding window of LIVE live churn keys; HASH maps)
//       MODE insert: insert churn key j only (into a full LRU map, which evicts)
//       CTR: a file the writer maps and keeps {next j, ops} in (u64 each), so a test
//       can tell which keys existed for the whole of a dump. RATE: target ops/s
//       (inserts+deletes; 0 or absent = as fast as possible). Prints "ready" once
//       running; on SIGTERM/SIGINT prints "ops=N secs=S rate=R failures=F" and exits.
//   churn_writer snap PIN OUT                 every key, by BPF_MAP_LOOKUP_BATCH, into OUT
//   churn_writer reopen PIN NKEYS AFTER_MS OUT
//       A writer that reopens its pin, as a reloaded program or Felix does (resize tests,
//       tests/test_resize_writers.py): writes churn keys 0..NKEYS-1 round after round, each
//       value stamped with last_seen = now and the round (a2b.bytes); after every 32 writes
//       opens PIN again, and when it names another map (a resize swapped it) switches to it
//       and writes AFTER_MS ms more, then stops. Prints "ready" after its first round; at
//       exit writes every key's LAST written key+value (NKEYS records of 16 + 88 bytes) to
//       OUT and prints "rounds=R after_swap_rounds=A swapped=S failures=F".
//
// Key (16 bytes, struct calico_ct_key): proto u32 LE, addr_a, addr_b (network order),
// port_a, port_b u16 LE. Stable key i: TCP 10.0.0.0+i -> 10.200.0.1, ports 40000/443.
// Churn key j: UDP (100.0.0.0 + j) -> 172.16.0.1, ports 53/53 (unique for j < 2^24 ... 2^32).
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
    int fd = sys_bpf(BPF_OBJ_GET, &a);
    if (fd < 0) {
        fprintf(stderr, "churn_writer: BPF_OBJ_GET %s: %s\n", path, strerror(errno));
        exit(2);
    }
    return fd;
}

static void make_key(uint8_t *k, int stable, uint64_t i) {
    uint32_t proto = stable ? 6 : 17;
    uint32_t a = stable ? 0x0A000000u + (uint32_t)i : 0x64000000u + (uint32_t)i;
    uint32_t b = stable ? 0x0AC80001u : 0xAC100001u;
    uint16_t pa = stable ? 40000 : 53, pb = stable ? 443 : 53;
    memcpy(k, &proto, 4);
    k[4] = a >> 24; k[5] = a >> 16; k[6] = a >> 8; k[7] = a;
    k[8] = b >> 24; k[9] = b >> 16; k[10] = b >> 8; k[11] = b;
    memcpy(k + 12, &pa, 2);
    memcpy(k + 14, &pb, 2);
}

static void make_value(uint8_t *v, int stable, uint64_t i, uint64_t now) {
    memset(v, 0, VS);
    memcpy(v + 8, &now, 8);  // last_seen
    v[16] = 0;               // NORMAL
    uint64_t bytes = 100 + i % 1000;
    uint32_t pkts = 1 + i % 7, bits = stable ? 0x3 : 0x0;  // syn|ack on TCP legs
    memcpy(v + 24, &bytes, 8);
    memcpy(v + 32, &pkts, 4);
    memcpy(v + 40, &bits, 4);
    memcpy(v + 48, &bytes, 8);
    memcpy(v + 56, &pkts, 4);
    memcpy(v + 64, &bits, 4);
}

static int update(int fd, const uint8_t *k, const uint8_t *v) {
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = fd;
    a.key = (uint64_t)(unsigned long)k;
    a.value = (uint64_t)(unsigned long)v;
    a.flags = BPF_ANY;
    return sys_bpf(BPF_MAP_UPDATE_ELEM, &a) < 0 ? -errno : 0;
}

static int delete(int fd, const uint8_t *k) {
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = fd;
    a.key = (uint64_t)(unsigned long)k;
    return sys_bpf(BPF_MAP_DELETE_ELEM, &a) < 0 ? -errno : 0;
}

static int cmd_fill(const char *pin, int stable, uint64_t start, uint64_t count) {
    int fd = obj_get(pin);
    enum { CHUNK = 4096 };
    static uint8_t keys[CHUNK * KS], vals[CHUNK * VS];
    uint64_t now = mono_ns();
    for (uint64_t done = 0; done < count;) {
        uint32_t n = count - done < CHUNK ? (uint32_t)(count - done) : CHUNK;
        for (uint32_t i = 0; i < n; i++) {
            make_key(keys + i * KS, stable, start + done + i);
            make_value(vals + i * VS, stable, start + done + i, now);
        }
        union bpf_attr a;
        memset(&a, 0, sizeof(a));
        a.batch.keys = (uint64_t)(unsigned long)keys;
        a.batch.values = (uint64_t)(unsigned long)vals;
        a.batch.count = n;
        a.batch.map_fd = fd;
        if (sys_bpf(BPF_MAP_UPDATE_BATCH, &a) < 0) {
            fprintf(stderr, "churn_writer: UPDATE_BATCH: %s (after %u)\n", strerror(errno), a.batch.count);
            return 1;
        }
        done += n;
    }
    return 0;
}

static int cmd_run(const char *pin, const char *mode, uint64_t live, uint64_t start, const char *ctr_path,
                   uint64_t rate) {
    int window = strcmp(mode, "window") == 0;
    if (!window && strcmp(mode, "insert") != 0) {
        fprintf(stderr, "churn_writer: mode must be window or insert\n");
        return 2;
    }
    int fd = obj_get(pin);
    int cfd = open(ctr_path, O_RDWR | O_CREAT, 0644);
    if (cfd < 0 || ftruncate(cfd, 4096) < 0) {
        perror("churn_writer: counter file");
        return 2;
    }
    volatile uint64_t *ctr = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0);
    if (ctr == MAP_FAILED) {
        perror("churn_writer: mmap");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    uint8_t k[KS], v[VS];
    uint64_t ops = 0, failures = 0, j = start, now = mono_ns();
    ctr[0] = j;
    ctr[1] = 0;
    printf("ready\n");
    fflush(stdout);
    uint64_t t0 = mono_ns();
    while (!stop) {
        if ((j & 1023) == 0) {
            now = mono_ns();
            if (rate) {  // ahead of the target rate: sleep until on schedule
                uint64_t due = t0 + (uint64_t)(ops * 1e9 / rate);
                if (due > now) {
                    struct timespec ts = {(time_t)((due - now) / 1000000000ull), (long)((due - now) % 1000000000ull)};
                    nanosleep(&ts, NULL);
                    now = mono_ns();
                }
            }
        }
        make_key(k, 0, j);
        make_value(v, 0, j, now);
        if (update(fd, k, v) != 0) failures++;
        ops++;
        if (window && j >= live) {
            make_key(k, 0, j - live);
            if (delete(fd, k) != 0) failures++;
            ops++;
        }
        j++;
        __atomic_store_n(&ctr[0], j, __ATOMIC_RELEASE);
        __atomic_store_n(&ctr[1], ops, __ATOMIC_RELAXED);
    }
    double secs = (mono_ns() - t0) / 1e9;
    printf("ops=%llu secs=%.3f rate=%.0f failures=%llu next=%llu\n", (unsigned long long)ops, secs,
           secs > 0 ? ops / secs : 0.0, (unsigned long long)failures, (unsigned long long)j);
    return 0;
}

static int cmd_snap(const char *pin, const char *out) {
    int fd = obj_get(pin);
    FILE *f = fopen(out, "wb");
    if (!f) {
        perror("churn_writer: snapshot file");
        return 2;
    }
    uint32_t count = 8192;
    uint8_t *keys = malloc((size_t)count * KS), *vals = malloc((size_t)count * VS);
    uint8_t in[KS], outb[KS];
    int first = 1;
    for (;;) {
        union bpf_attr a;
        memset(&a, 0, sizeof(a));
        a.batch.in_batch = first ? 0 : (uint64_t)(unsigned long)in;
        a.batch.out_batch = (uint64_t)(unsigned long)outb;
        a.batch.keys = (uint64_t)(unsigned long)keys;
        a.batch.values = (uint64_t)(unsigned long)vals;
        a.batch.count = count;
        a.batch.map_fd = fd;
        long r = sys_bpf(BPF_MAP_LOOKUP_BATCH, &a);
        int err = r < 0 ? errno : 0;
        if (err == ENOSPC) {
            count *= 2;
            keys = realloc(keys, (size_t)count * KS);
            vals = realloc(vals, (size_t)count * VS);
            continue;
        }
        if (err && err != ENOENT) {
            fprintf(stderr, "churn_writer: LOOKUP_BATCH: %s\n", strerror(err));
            return 1;
        }
        fwrite(keys, KS, a.batch.count, f);
        if (err == ENOENT) break;
        memcpy(in, outb, KS);
        first = 0;
    }
    fclose(f);
    return 0;
}

static uint32_t map_id(int fd) {
    struct bpf_map_info info;
    union bpf_attr a;
    memset(&info, 0, sizeof(info));
    memset(&a, 0, sizeof(a));
    a.info.bpf_fd = fd;
    a.info.info_len = sizeof(info);
    a.info.info = (uint64_t)(unsigned long)&info;
    return sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a) < 0 ? 0 : info.id;
}

static int cmd_reopen(const char *pin, uint64_t nkeys, uint64_t after_ms, const char *out) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int fd = obj_get(pin);
    uint32_t id = map_id(fd);
    uint8_t *last = calloc(nkeys, KS + VS);
    uint64_t rounds = 0, after_rounds = 0, writes = 0, swapped_at = 0, failures = 0;
    while (!stop && !(swapped_at && mono_ns() - swapped_at >= after_ms * 1000000ull)) {
        for (uint64_t i = 0; i < nkeys; i++) {
            uint8_t *k = last + i * (KS + VS), *v = k + KS;
            uint64_t round = rounds + 1;
            make_key(k, 0, i);
            make_value(v, 0, i, mono_ns());
            memcpy(v + 24, &round, 8);  // a2b.bytes: the round
            if (update(fd, k, v) != 0) failures++;
            if ((++writes & 31) == 0 && !swapped_at) {
                int nfd = obj_get(pin);
                uint32_t nid = map_id(nfd);
                if (nid && nid != id) {
                    close(fd);
                    fd = nfd, id = nid, swapped_at = mono_ns();
                } else {
                    close(nfd);
                }
            }
        }
        if (++rounds == 1) {
            printf("ready\n");
            fflush(stdout);
        }
        if (swapped_at) after_rounds++;
    }
    FILE *f = fopen(out, "wb");
    if (!f || fwrite(last, KS + VS, nkeys, f) != nkeys || fclose(f) != 0) {
        perror("churn_writer: OUT");
        return 2;
    }
    printf("rounds=%llu after_swap_rounds=%llu swapped=%d failures=%llu\n", (unsigned long long)rounds,
           (unsigned long long)after_rounds, swapped_at != 0, (unsigned long long)failures);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 6 && strcmp(argv[1], "fill") == 0)
        return cmd_fill(argv[2], argv[3][0] == 's', strtoull(argv[4], 0, 10), strtoull(argv[5], 0, 10));
    if ((argc == 7 || argc == 8) && strcmp(argv[1], "run") == 0)
        return cmd_run(argv[2], argv[3], strtoull(argv[4], 0, 10), strtoull(argv[5], 0, 10), argv[6],
                       argc == 8 ? strtoull(argv[7], 0, 10) : 0);
    if (argc == 4 && strcmp(argv[1], "snap") == 0) return cmd_snap(argv[2], argv[3]);
    if (argc == 6 && strcmp(argv[1], "reopen") == 0)
        return cmd_reopen(argv[2], strtoull(argv[3], 0, 10), strtoull(argv[4], 0, 10), argv[5]);
    fprintf(stderr, "usage: churn_writer fill PIN s|c START COUNT | run PIN window|insert LIVE START CTR [RATE] | snap PIN OUT | reopen PIN NKEYS AFTER_MS OUT\n");
    return 2;
}
