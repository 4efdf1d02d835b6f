// A BPF object that declares Calico's v4 CT map (v3.31+: LRU_HASH, key 16, value 88)
// with a configurable max_entries, pinned by name. Loading it with `bpftool prog load`
// reproduces libbpf's pinned-map reuse check (facts §7): libbpf reuses the pin only if
// type, key/value size, max_entries, flags and map_extra all match.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#ifndef CT_MAX_ENTRIES
#define CT_MAX_ENTRIES 1048576
#endif
#ifndef CT_MAP_TYPE
#define CT_MAP_TYPE BPF_MAP_TYPE_LRU_HASH
#endif
#ifndef CT_MAP_FLAGS
#define CT_MAP_FLAGS 0
#endif

struct calico_ct_key {
	__u32 protocol;
	__u32 addr_a, addr_b;
	__u16 port_a, port_b;
};

struct calico_ct_value {
	__u8 bytes[88];
};

struct {
	__uint(type, CT_MAP_TYPE);
	__type(key, struct calico_ct_key);
	__type(value, struct calico_ct_value);
	__uint(max_entries, CT_MAX_ENTRIES);
	__uint(map_flags, CT_MAP_FLAGS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cali_v4_ct4 SEC(".maps");

SEC("tc")
int ct_lookup(struct __sk_buff *skb)
{
	struct calico_ct_key key = {};

	key.protocol = 6;
	// Use the map so that libbpf creates (or reuses) it at load time.
	if (bpf_map_lookup_elem(&cali_v4_ct4, &key))
		return 1;
	return 0;
}

char LICENSE[] SEC("license") = "Apache-2.0";
