// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xtrace-catch datapath: one parser shared by an XDP program (ingress) and
 * two TC programs (ingress, egress), counting every frame into a per-CPU
 * flow hash. A monitor never changes traffic: XDP returns XDP_PASS, TC
 * returns TC_ACT_UNSPEC so filters attached after ours still run.
 *
 * Hot-path rules: no clock reads, no locks, no loops the compiler cannot
 * unroll. Idleness is derived in user space from unchanged counters.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "xtrace.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Tunables, written into .rodata by user space before load. Zero values
 * count everything on an Ethernet link (so `bpftool prog loadall` works). */
const volatile __u32 cfg_filter = XT_FILTER_ALL;
const volatile __u32 cfg_exclude_dns = 0;
const volatile __u32 cfg_link_type = XT_LINK_ETHERNET;

/*
 * The flow map's kind. The shipped object uses XT_FLOWS_SHARED: one value per
 * flow, whatever the CPU count, updated with atomic adds, and read for user
 * space by xtrace_read_flows (below). Per-CPU values cost max_flows x CPUs x
 * value in kernel memory and in every read (810 MB for 65,536 flows on 128
 * CPUs). bench/variants.py builds the other kinds to compare (measured side by
 * side in docs/PERFORMANCE.md):
 *   XT_FLOWS_PERCPU  per-CPU values, plain adds (the design before Step 10);
 *   XT_FLOWS_HOT16   per-CPU packets/bytes only, the rest in a shared map;
 *   XT_FLOWS_LOCKED  one value per flow, added to under its bpf_spin_lock and
 *                    copied with BPF_F_LOCK: exact too, ~40 ns more a packet.
 */
#define XT_FLOWS_SHARED 0
#define XT_FLOWS_PERCPU 1
#define XT_FLOWS_HOT16  2
#define XT_FLOWS_LOCKED 3
#ifndef XT_FLOWS
#define XT_FLOWS XT_FLOWS_SHARED
#endif

#if XT_FLOWS == XT_FLOWS_SHARED
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XT_DEFAULT_FLOWS); /* resized before load */
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");
#define XT_ADD_ATOMIC 1
#elif XT_FLOWS == XT_FLOWS_LOCKED
struct flow_entry {
	struct flow_value v;
	struct bpf_spin_lock lock;
	__u32 pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XT_DEFAULT_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_entry);
} flows SEC(".maps");
#define XT_ADD_ATOMIC 0
#elif XT_FLOWS == XT_FLOWS_PERCPU
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, XT_DEFAULT_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");
#define XT_ADD_ATOMIC 0
#elif XT_FLOWS == XT_FLOWS_HOT16
struct flow_hot {
	__u64 packets;
	__u64 bytes;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, XT_DEFAULT_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_hot);
} flows SEC(".maps");
/* ECN, fragments and RoCE opcodes of the flows that have any, shared. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XT_DEFAULT_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flow_extras SEC(".maps");
#define XT_ADD_ATOMIC 1 /* for flow_extras */
#else
#error "unknown XT_FLOWS"
#endif

/* Where packets go when `flows` is full: one record per direction and type,
 * index = direction * XT_TYPE_MAX + traffic_type. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XT_DIR_MAX * XT_TYPE_MAX);
	__type(key, __u32);
	__type(value, struct flow_value);
} overflow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xtrace_stats);
} stats SEC(".maps");

/* The multi-buffer XDP program's copy of a frame's first bytes, for a frame whose
 * headers are not all in the linear part (mlx5's striding RQ can leave it empty):
 * XDP_HDR_COPY bytes are copied, and the value is as large as the offsets the parser
 * can reach, which the verifier checks against it. */
#define XDP_HDR_COPY    256 /* a power of two */
#define XDP_HDR_BUF     1088
struct hdr_buf {
	__u8 b[XDP_HDR_BUF];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hdr_buf);
} xdp_hdr_copy SEC(".maps");

/* DNS server addresses (16-byte, IPv4 v4-mapped) for --exclude-dns. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XT_DNS_SERVERS_MAX);
	__type(key, __u8[16]);
	__type(value, __u8);
} dns_servers SEC(".maps");

/*
 * Wire formats. `*_OFF` are byte offsets from the start of the header they
 * name; multi-byte fields are big-endian and read a byte at a time.
 */

/* Ethernet II (IEEE 802.3) and its VLAN tags (IEEE 802.1Q C-tag, 802.1ad S-tag
 * for QinQ): a 4-byte tag is the TCI (PCP, DEI, 12-bit VID) then the next ethertype. */
#define ETH_HLEN        14
#define ETH_PROTO_OFF   12
#define ETH_P_IP        0x0800
#define ETH_P_IPV6      0x86DD
#define ETH_P_8021Q     0x8100
#define ETH_P_8021AD    0x88A8
#define ETH_P_ROCE      0x8915 /* RoCE v1, IBTA Annex A16 */
#define VLAN_HLEN       4
#define VLAN_PROTO_OFF  2
#define VLAN_VID_MASK   0x0fff
#define MAX_VLAN_TAGS   2

/* PPPoE session stage (RFC 2516, 4, 5.5): version/type 0x11, code 0x00, session ID,
 * length (6 bytes), then the PPP protocol field (RFC 1661, 2): IPv4 0x0021 (RFC 1332),
 * IPv6 0x0057 (RFC 5072). Other PPP protocols (LCP, IPCP, ...) stay Other. */
#define ETH_P_PPP_SES   0x8864
#define PPPOE_HLEN      6
#define PPPOE_VER_TYPE  0x11
#define PPPOE_CODE_OFF  1
#define PPPOE_CODE_SESSION 0x00
#define PPP_PROTO_LEN   2
#define PPP_IP          0x0021
#define PPP_IPV6        0x0057

/* IPoIB (RFC 4391) as a Linux netdev shows it: a 20-byte pseudo header (the
 * hardware address) then the 4-byte encapsulation header (ethertype, reserved). */
#define IPOIB_HLEN      24
#define IPOIB_PROTO_OFF 20

/* IP protocol numbers (IANA), IPv6 extension headers included. */
#define IPPROTO_HOPOPTS  0
#define IPPROTO_ICMP     1
#define IPPROTO_TCP      6
#define IPPROTO_UDP      17
#define IPPROTO_ROUTING  43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH       51
#define IPPROTO_ICMPV6   58
#define IPPROTO_DSTOPTS  60

/* ECN field (RFC 3168, 5): the low 2 bits of the IPv4 TOS octet / the IPv6
 * (and GRH) Traffic Class; both bits set is CE, Congestion Experienced. */
#define ECN_MASK 0x3
#define ECN_CE   0x3

/* IPv4 (RFC 791, 3.1). IHL and the version share octet 0. The fragment
 * offset (13 bits, 8-octet units) follows the flags; only a non-first fragment
 * (offset != 0) lacks the L4 header, so the MF flag (0x2000) is not looked at. */
#define IPV4_VERSION     4
#define IPV4_HLEN_MIN    20
#define IPV4_IHL_MASK    0x0f /* header length in 32-bit words */
#define IPV4_TOS_OFF     1
#define IPV4_FRAG_OFF    6
#define IPV4_OFFSET_MASK 0x1fff
#define IPV4_PROTO_OFF   9
#define IPV4_SADDR_OFF   12
#define IPV4_DADDR_OFF   16

/* IPv6 (RFC 8200, 3). The Traffic Class straddles octets 0 and 1, so its ECN
 * bits are bits 5-4 of octet 1. */
#define IPV6_VERSION     6
#define IPV6_HLEN        40
#define IPV6_ECN_SHIFT   4
#define IPV6_NEXTHDR_OFF 6
#define IPV6_SADDR_OFF   8
#define IPV6_DADDR_OFF   24

/* IPv6 extension headers (RFC 8200, 4): next header in octet 0, at least 8
 * octets. Hop-by-Hop, Routing and Destination Options give their length in
 * octet 1 in 8-octet units not counting the first 8 (RFC 8200, 4.3-4.6); AH in
 * 4-octet units minus 2 (RFC 4302, 2.2). The Fragment header (RFC 8200, 4.5)
 * is 8 octets; octets 2-3 are the offset (13 bits, 8-octet units), 2 reserved
 * bits and the M flag: a non-first fragment has offset != 0. */
#define IPV6_EXT_NEXTHDR_OFF 0
#define IPV6_EXT_LEN_OFF     1
#define IPV6_EXT_HLEN_MIN    8
#define IPV6_EXT_LEN_UNIT    8
#define AH_LEN_UNIT          4
#define AH_LEN_BIAS          2
#define IPV6_FRAG_HLEN       8
#define IPV6_FRAG_OFF        2
#define IPV6_FRAG_OFFSET_MASK 0xfff8
#define IPV6_MAX_EXT   6
/* Keeps the L4 offset's range small for the verifier; a chain this long is
 * beyond anything we parse. */
#define IPV6_L4_OFF_MAX 1024

/* TCP (RFC 9293, 3.1), UDP (RFC 768), ICMP (RFC 792) / ICMPv6 (RFC 4443): the
 * ports lead both TCP and UDP; TCP's data offset (32-bit words) is the high
 * nibble of octet 12. ICMP is counted when its first 8 octets are there. */
#define L4_SPORT_OFF   0
#define L4_DPORT_OFF   2
#define TCP_HLEN_MIN   20
#define TCP_DOFF_OFF   12
#define UDP_HLEN       8
#define ICMP_HLEN      8

#define DNS_PORT       53 /* RFC 1035, 4.2 (UDP and TCP) */

/* RoCE v2 (IBTA Annex A17): the BTH in a UDP datagram to the IANA port 4791.
 * RoCE v1 (Annex A16): ethertype 0x8915, a GRH then the BTH. The GRH (IBTA
 * Vol. 1, 8.3) is laid out as an IPv6 header; next header 0x1B is the IBA
 * transport (a BTH follows). */
#define ROCE_V2_PORT   4791
#define GRH_LEN        40
#define GRH_NEXTHDR_OFF 6
#define GRH_SGID_OFF   8
#define GRH_DGID_OFF   24
#define GRH_NEXT_BTH   0x1B

/* BTH (IBTA Vol. 1, 9.2): the opcode in octet 0, the 24-bit destination QP in
 * octets 5-7. */
#define BTH_LEN        12
#define BTH_OPCODE_OFF 0
#define BTH_DQP_OFF    5

/*
 * BTH opcodes (IBTA Vol. 1, 9.2.1, the OpCode table): bits 7-5 are the
 * transport (RC 0x00, UC 0x20, RD 0x40, UD 0x60, CNP 0x80, XRC 0xA0), bits 4-0
 * the operation, numbered alike for every transport. The classes counted are
 * runs of operations: FIRST..LAST of each run below.
 */
#define BTH_OP_MASK            0x1f
#define BTH_OP_SEND_FIRST      0x00 /* SEND first, middle, last, last+imm, only, only+imm */
#define BTH_OP_SEND_ONLY_IMM   0x05
#define BTH_OP_WRITE_FIRST     0x06 /* RDMA WRITE first, middle, last, last+imm, only, only+imm */
#define BTH_OP_WRITE_ONLY_IMM  0x0b
#define BTH_OP_READ_REQ        0x0c /* RDMA READ request */
#define BTH_OP_READ_RESP_FIRST 0x0d /* RDMA READ response first, middle, last, only */
#define BTH_OP_READ_RESP_ONLY  0x10
#define BTH_OP_ACK             0x11 /* ACK, ATOMIC ACK */
#define BTH_OP_ATOMIC_ACK      0x12
#define BTH_OP_CMP_SWAP        0x13 /* compare-swap, fetch-add */
#define BTH_OP_FETCH_ADD       0x14
#define BTH_OP_SEND_LAST_INV   0x16 /* SEND last / only with invalidate */
#define BTH_OP_SEND_ONLY_INV   0x17
/* CNP (IBTA Annex A17, RoCE v2 congestion control): transport 0x80, operation 0x01. */
#define BTH_OP_CNP             0x81

/* In TC, headers beyond the linear part are pulled in up to this length. */
#define TC_PULL_LEN    256

enum parse_result {
	PARSE_OK = 0,
	PARSE_TRUNCATED = 1, /* truncated or unparsable */
};

/* What the parser learnt besides the key. */
struct pkt_info {
	__u32 hdr_len;  /* L2..L4 header bytes, replicated per GSO segment */
	__s32 opcode;   /* BTH opcode, -1 when not RoCE */
	__u8 ecn_ce;
	__u8 fragment;  /* non-first fragment */
	__u8 vlan_seen; /* the outer tag (maybe VID 0) is already in the key */
};

/*
 * Addresses are copied with word loads from the packet: __builtin_memcpy from
 * a byte pointer compiles to byte loads, shifts and ors (~45 insns per 16-byte
 * address). Headers sit at any offset; the verifier accepts unaligned packet
 * loads where the CPU handles them (x86-64, arm64).
 */
static __always_inline void set_v4mapped(__u8 *dst, const __u8 *src4)
{
	__u32 a = *(const __u32 *)src4;

	/* dst was zeroed with the key; ::ffff:a.b.c.d */
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &a, 4);
}

static __always_inline void copy_addr16(__u8 *dst, const __u8 *src)
{
	__u64 a = *(const __u64 *)src;
	__u64 b = *(const __u64 *)(src + 8);

	__builtin_memcpy(dst, &a, 8);
	__builtin_memcpy(dst + 8, &b, 8);
}

/* A big-endian 16-bit field, as a __u32 like the (__u16)p[0] << 8 | p[1] it
 * stands for (as a __u16, clang compiles the masked uses otherwise). */
static __always_inline __u32 load_be16(const __u8 *p)
{
	return ((__u32)p[0] << 8) | p[1];
}

/* ECN is CE in an IPv6 header or a GRH (the same Traffic Class field). */
static __always_inline __u8 ipv6_ecn_ce(const __u8 *ip6)
{
	return ((ip6[1] >> IPV6_ECN_SHIFT) & ECN_MASK) == ECN_CE;
}

/* TCP and UDP: the ports lead the header. */
static __always_inline void set_ports(struct flow_key *key, const __u8 *l4)
{
	key->src_port = load_be16(l4 + L4_SPORT_OFF);
	key->dst_port = load_be16(l4 + L4_DPORT_OFF);
}

/* RoCE v1 and v2: the destination QP and the opcode from the BTH. */
static __always_inline void set_bth(struct flow_key *key, struct pkt_info *pi, const __u8 *bth)
{
	const __u8 *qp = bth + BTH_DQP_OFF;

	key->dst_qp = ((__u32)qp[0] << 16) | ((__u32)qp[1] << 8) | qp[2];
	pi->opcode = bth[BTH_OPCODE_OFF];
}

/* A non-first IP fragment (key->protocol set): no L4 header here, so no ports;
 * the type is the protocol's. `icmp` is ICMP's protocol number for this IP
 * version. A macro: as an inline function, clang lays the parser out otherwise. */
#define XT_SET_FRAGMENT(key, pi, len, icmp)                     \
	do {                                                    \
		(pi)->fragment = 1;                             \
		(pi)->hdr_len = (len);                          \
		if ((key)->protocol == IPPROTO_TCP)             \
			(key)->traffic_type = XT_TYPE_TCP;      \
		else if ((key)->protocol == IPPROTO_UDP)        \
			(key)->traffic_type = XT_TYPE_UDP;      \
		else if ((key)->protocol == (icmp))             \
			(key)->traffic_type = XT_TYPE_ICMP;     \
	} while (0)

/* L4 ports, and RoCE v2's BTH behind UDP ROCE_V2_PORT. `l4` is the L4 offset. */
static __always_inline int parse_l4(void *data, void *data_end, __u32 l4,
				    struct flow_key *key, struct pkt_info *pi)
{
	__u8 *p = data + l4;

	switch (key->protocol) {
	case IPPROTO_TCP: {
		if ((void *)(p + TCP_HLEN_MIN) > data_end)
			return PARSE_TRUNCATED;
		__u32 doff = (p[TCP_DOFF_OFF] >> 4) * 4;
		if (doff < TCP_HLEN_MIN)
			return PARSE_TRUNCATED;
		/* Options must be present in full: doff*4 is replicated per GSO segment. */
		if ((void *)(p + doff) > data_end)
			return PARSE_TRUNCATED;
		set_ports(key, p);
		key->traffic_type = XT_TYPE_TCP;
		pi->hdr_len = l4 + doff;
		return PARSE_OK;
	}
	case IPPROTO_UDP: {
		if ((void *)(p + UDP_HLEN) > data_end)
			return PARSE_TRUNCATED;
		set_ports(key, p);
		key->traffic_type = XT_TYPE_UDP;
		pi->hdr_len = l4 + UDP_HLEN;
		if (key->dst_port != ROCE_V2_PORT)
			return PARSE_OK;
		/* RoCE v2: a datagram to ROCE_V2_PORT too short for a BTH is malformed. */
		__u8 *bth = p + UDP_HLEN;
		if ((void *)(bth + BTH_LEN) > data_end)
			return PARSE_TRUNCATED;
		key->traffic_type = XT_TYPE_ROCE_V2;
		set_bth(key, pi, bth);
		pi->hdr_len = l4 + UDP_HLEN + BTH_LEN;
		return PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if ((void *)(p + ICMP_HLEN) > data_end)
			return PARSE_TRUNCATED;
		key->traffic_type = XT_TYPE_ICMP;
		pi->hdr_len = l4 + ICMP_HLEN;
		return PARSE_OK;
	default:
		/* Everything before the L4 payload (e.g. the last extension header) must be there. */
		if ((void *)p > data_end)
			return PARSE_TRUNCATED;
		pi->hdr_len = l4;
		return PARSE_OK;
	}
}

static __always_inline int parse_ipv4(void *data, void *data_end, __u32 off,
				      struct flow_key *key, struct pkt_info *pi)
{
	__u8 *ip = data + off;

	if ((void *)(ip + IPV4_HLEN_MIN) > data_end)
		return PARSE_TRUNCATED;
	if ((ip[0] >> 4) != IPV4_VERSION)
		return PARSE_TRUNCATED;
	__u32 ihl = (ip[0] & IPV4_IHL_MASK) * 4;
	if (ihl < IPV4_HLEN_MIN)
		return PARSE_TRUNCATED;
	/* Options must be present in full (IHL covers them). */
	if ((void *)(ip + ihl) > data_end)
		return PARSE_TRUNCATED;

	pi->ecn_ce = (ip[IPV4_TOS_OFF] & ECN_MASK) == ECN_CE;
	key->protocol = ip[IPV4_PROTO_OFF];
	set_v4mapped(key->src_addr, ip + IPV4_SADDR_OFF);
	set_v4mapped(key->dst_addr, ip + IPV4_DADDR_OFF);

	/* The fragment offset, i.e. load_be16(ip + IPV4_FRAG_OFF) & IPV4_OFFSET_MASK,
	 * masked a byte at a time (the instructions clang made of it before). */
	__u16 frag = ((ip[IPV4_FRAG_OFF] & (IPV4_OFFSET_MASK >> 8)) << 8) | ip[IPV4_FRAG_OFF + 1];
	if (frag) {
		XT_SET_FRAGMENT(key, pi, off + ihl, IPPROTO_ICMP);
		return PARSE_OK;
	}
	return parse_l4(data, data_end, off + ihl, key, pi);
}

static __always_inline int parse_ipv6(void *data, void *data_end, __u32 off,
				      struct flow_key *key, struct pkt_info *pi)
{
	__u8 *ip6 = data + off;

	if ((void *)(ip6 + IPV6_HLEN) > data_end)
		return PARSE_TRUNCATED;
	if ((ip6[0] >> 4) != IPV6_VERSION)
		return PARSE_TRUNCATED;

	pi->ecn_ce = ipv6_ecn_ce(ip6);
	copy_addr16(key->src_addr, ip6 + IPV6_SADDR_OFF);
	copy_addr16(key->dst_addr, ip6 + IPV6_DADDR_OFF);

	__u8 nexthdr = ip6[IPV6_NEXTHDR_OFF];
	__u32 l4 = off + IPV6_HLEN;

	/* Bounded walk over the extension headers we can skip. More than
	 * IPV6_MAX_EXT of them (a loop or a crafted chain) is unparsable. */
#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT; i++) {
		__u8 *h = data + l4;
		__u32 len;

		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if ((void *)(h + IPV6_EXT_HLEN_MIN) > data_end)
				return PARSE_TRUNCATED;
			len = ((__u32)h[IPV6_EXT_LEN_OFF] + 1) * IPV6_EXT_LEN_UNIT;
			break;
		case IPPROTO_AH:
			if ((void *)(h + IPV6_EXT_HLEN_MIN) > data_end)
				return PARSE_TRUNCATED;
			len = ((__u32)h[IPV6_EXT_LEN_OFF] + AH_LEN_BIAS) * AH_LEN_UNIT;
			break;
		case IPPROTO_FRAGMENT:
			if ((void *)(h + IPV6_FRAG_HLEN) > data_end)
				return PARSE_TRUNCATED;
			if (load_be16(h + IPV6_FRAG_OFF) & IPV6_FRAG_OFFSET_MASK) {
				key->protocol = h[IPV6_EXT_NEXTHDR_OFF];
				XT_SET_FRAGMENT(key, pi, l4 + IPV6_FRAG_HLEN, IPPROTO_ICMPV6);
				return PARSE_OK;
			}
			len = IPV6_FRAG_HLEN;
			break;
		default:
			key->protocol = nexthdr;
			return parse_l4(data, data_end, l4, key, pi);
		}
		nexthdr = h[IPV6_EXT_NEXTHDR_OFF];
		l4 += len;
		if (l4 > IPV6_L4_OFF_MAX)
			return PARSE_TRUNCATED;
	}
	/* IPV6_MAX_EXT headers were skipped: what follows must not be another one. */
	switch (nexthdr) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case IPPROTO_FRAGMENT:
		return PARSE_TRUNCATED;
	}
	key->protocol = nexthdr;
	return parse_l4(data, data_end, l4, key, pi);
}

/* RoCE v1: GRH (GRH_LEN bytes, next header GRH_NEXT_BTH) then BTH. */
static __always_inline int parse_roce_v1(void *data, void *data_end, __u32 off,
					 struct flow_key *key, struct pkt_info *pi)
{
	__u8 *grh = data + off;

	if ((void *)(grh + GRH_LEN + BTH_LEN) > data_end)
		return PARSE_TRUNCATED;
	if (grh[GRH_NEXTHDR_OFF] != GRH_NEXT_BTH)
		return PARSE_TRUNCATED;
	__u8 *bth = grh + GRH_LEN;

	pi->ecn_ce = ipv6_ecn_ce(grh);
	copy_addr16(key->src_addr, grh + GRH_SGID_OFF);
	copy_addr16(key->dst_addr, grh + GRH_DGID_OFF);
	key->traffic_type = XT_TYPE_ROCE_V1;
	set_bth(key, pi, bth);
	pi->hdr_len = off + GRH_LEN + BTH_LEN;
	return PARSE_OK;
}

/* Ethernet (with up to MAX_VLAN_TAGS in-frame tags) or IPoIB framing. */
static __always_inline int parse_frame(void *data, void *data_end,
				       struct flow_key *key, struct pkt_info *pi)
{
	__u8 *p = data;
	__u32 off;
	__u16 proto;

	if (cfg_link_type == XT_LINK_INFINIBAND) {
		if ((void *)(p + IPOIB_HLEN) > data_end)
			return PARSE_TRUNCATED;
		proto = load_be16(p + IPOIB_PROTO_OFF);
		off = IPOIB_HLEN;
	} else {
		if ((void *)(p + ETH_HLEN) > data_end)
			return PARSE_TRUNCATED;
		proto = load_be16(p + ETH_PROTO_OFF);
		off = ETH_HLEN;
#pragma unroll
		for (int i = 0; i < MAX_VLAN_TAGS; i++) {
			if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
				break;
			__u8 *tag = data + off;
			if ((void *)(tag + VLAN_HLEN) > data_end)
				return PARSE_TRUNCATED;
			if (!pi->vlan_seen) {
				key->vlan_id = load_be16(tag) & VLAN_VID_MASK;
				pi->vlan_seen = 1;
			}
			proto = load_be16(tag + VLAN_PROTO_OFF);
			off += VLAN_HLEN;
		}
		if (proto == ETH_P_8021Q || proto == ETH_P_8021AD)
			return PARSE_TRUNCATED; /* more tags than we parse */
		/* PPPoE session data: the flow is the inner IP packet's (its ethertype in the key);
		 * the 8 bytes of PPPoE and PPP count toward the headers, like a VLAN tag. */
		if (proto == ETH_P_PPP_SES) {
			__u8 *pppoe = data + off;
			if ((void *)(pppoe + PPPOE_HLEN + PPP_PROTO_LEN) > data_end)
				return PARSE_TRUNCATED;
			__u32 ppp = load_be16(pppoe + PPPOE_HLEN);
			if (pppoe[0] == PPPOE_VER_TYPE && pppoe[PPPOE_CODE_OFF] == PPPOE_CODE_SESSION &&
			    (ppp == PPP_IP || ppp == PPP_IPV6)) {
				proto = ppp == PPP_IP ? ETH_P_IP : ETH_P_IPV6;
				off += PPPOE_HLEN + PPP_PROTO_LEN;
			}
		}
	}

	key->eth_proto = proto;
	pi->hdr_len = off;

	int ret;
	switch (proto) {
	case ETH_P_IP:
		ret = parse_ipv4(data, data_end, off, key, pi);
		break;
	case ETH_P_IPV6:
		ret = parse_ipv6(data, data_end, off, key, pi);
		break;
	case ETH_P_ROCE:
		if (cfg_link_type == XT_LINK_INFINIBAND) {
			ret = PARSE_OK;
			break;
		}
		return parse_roce_v1(data, data_end, off, key, pi);
	default:
		ret = PARSE_OK; /* Other: counted by ethertype */
		break;
	}
	/* An IPoIB link carries nothing else: ARP and IP alike are IPoIB traffic. */
	if (ret == PARSE_OK && cfg_link_type == XT_LINK_INFINIBAND)
		key->traffic_type = XT_TYPE_IPOIB;
	return ret;
}

static __always_inline int filtered_out(const struct flow_key *key)
{
	__u8 t = key->traffic_type;

	switch (cfg_filter) {
	case XT_FILTER_TCP:
		if (key->protocol != IPPROTO_TCP || !key->eth_proto || t == XT_TYPE_OTHER)
			return 1;
		break;
	case XT_FILTER_UDP:
		if (key->protocol != IPPROTO_UDP || t == XT_TYPE_OTHER)
			return 1;
		break;
	case XT_FILTER_ROCE:
		if (t != XT_TYPE_ROCE_V1 && t != XT_TYPE_ROCE_V2)
			return 1;
		break;
	case XT_FILTER_ROCE_V1:
		if (t != XT_TYPE_ROCE_V1)
			return 1;
		break;
	case XT_FILTER_ROCE_V2:
		if (t != XT_TYPE_ROCE_V2)
			return 1;
		break;
	case XT_FILTER_IB:
		if (t != XT_TYPE_ROCE_V1 && t != XT_TYPE_ROCE_V2 && t != XT_TYPE_IPOIB)
			return 1;
		break;
	}

	if (cfg_exclude_dns && (key->eth_proto == ETH_P_IP || key->eth_proto == ETH_P_IPV6)) {
		if ((key->protocol == IPPROTO_UDP || key->protocol == IPPROTO_TCP) &&
		    (key->src_port == DNS_PORT || key->dst_port == DNS_PORT))
			return 1;
		if (bpf_map_lookup_elem(&dns_servers, key->src_addr) ||
		    bpf_map_lookup_elem(&dns_servers, key->dst_addr))
			return 1;
	}
	return 0;
}

/* Add to a counter: atomically where other CPUs add to the same value (a shared
 * flow value), plainly where only this CPU does (per-CPU values, a local). The
 * result is unused, so clang emits BPF_ATOMIC_ADD (lock xadd), known to every
 * kernel with BPF. */
#define XT_ADD(atomic, field, n)                          \
	do {                                              \
		if (atomic)                               \
			__sync_fetch_and_add(&(field), (n)); \
		else                                      \
			(field) += (n);                   \
	} while (0)

static __always_inline void add_ops(struct flow_value *v, __s32 opcode, __u64 segs, int atomic)
{
	if (opcode < 0)
		return;
	if (opcode == BTH_OP_CNP) {
		XT_ADD(atomic, v->cnp, segs);
		return;
	}
	/* The low 5 bits name the operation for every transport (RC/UC/RD/UD/XRC). */
	__u32 op = opcode & BTH_OP_MASK;
	if (op <= BTH_OP_SEND_ONLY_IMM || op == BTH_OP_SEND_LAST_INV || op == BTH_OP_SEND_ONLY_INV)
		XT_ADD(atomic, v->op_send, segs);
	else if (op <= BTH_OP_WRITE_ONLY_IMM)
		XT_ADD(atomic, v->op_write, segs);
	else if (op == BTH_OP_READ_REQ)
		XT_ADD(atomic, v->op_read_req, segs);
	else if (op <= BTH_OP_READ_RESP_ONLY)
		XT_ADD(atomic, v->op_read_resp, segs);
	else if (op <= BTH_OP_ATOMIC_ACK)
		XT_ADD(atomic, v->op_ack, segs);
	else if (op <= BTH_OP_FETCH_ADD)
		XT_ADD(atomic, v->op_atomic, segs);
	else
		XT_ADD(atomic, v->op_other, segs);
}

/* Everything but packets and bytes: zero for most packets. */
static __always_inline void add_extras(struct flow_value *v, const struct pkt_info *pi,
				       __u64 segs, int atomic)
{
	if (pi->ecn_ce)
		XT_ADD(atomic, v->ecn_ce, segs);
	if (pi->fragment)
		XT_ADD(atomic, v->fragments, segs);
	add_ops(v, pi->opcode, segs, atomic);
}

static __always_inline void add_value(struct flow_value *v, const struct pkt_info *pi,
				      __u64 segs, __u64 bytes, int atomic)
{
	XT_ADD(atomic, v->packets, segs);
	XT_ADD(atomic, v->bytes, bytes);
	add_extras(v, pi, segs, atomic);
}

/* Parse into a fresh key: `vlan_hw_present`/`vlan_hw_tci` are the tag the kernel
 * moved into metadata (TC only). */
static __always_inline int parse_fresh(void *data, void *data_end, struct flow_key *key,
				       struct pkt_info *pi, __u32 vlan_hw_present,
				       __u16 vlan_hw_tci, __u8 direction)
{
	__builtin_memset(key, 0, sizeof(*key));
	__builtin_memset(pi, 0, sizeof(*pi));
	pi->opcode = -1;
	key->direction = direction;
	if (vlan_hw_present) {
		key->vlan_id = vlan_hw_tci & VLAN_VID_MASK;
		pi->vlan_seen = 1;
	}
	return parse_frame(data, data_end, key, pi);
}

/*
 * Add a frame to its flow's value; 0 when the map has no room for a new flow.
 * A new flow goes in with BPF_NOEXIST: another CPU may insert the same key
 * first, and then the lookup after the failed insert finds its value.
 */
#if XT_FLOWS == XT_FLOWS_HOT16
static __always_inline void count_extras(struct flow_key *key, const struct pkt_info *pi, __u64 segs)
{
	if (!pi->ecn_ce && !pi->fragment && pi->opcode < 0)
		return;
	struct flow_value *v = bpf_map_lookup_elem(&flow_extras, key);
	if (!v) {
		struct flow_value init = {};
		add_extras(&init, pi, segs, 0);
		if (!bpf_map_update_elem(&flow_extras, key, &init, BPF_NOEXIST))
			return;
		v = bpf_map_lookup_elem(&flow_extras, key);
		if (!v)
			return;
	}
	add_extras(v, pi, segs, 1);
}

static __always_inline int count_flow(struct flow_key *key, const struct pkt_info *pi,
				      __u64 segs, __u64 bytes)
{
	struct flow_hot *h = bpf_map_lookup_elem(&flows, key);
	if (!h) {
		struct flow_hot init = { .packets = segs, .bytes = bytes };
		if (bpf_map_update_elem(&flows, key, &init, BPF_NOEXIST)) {
			h = bpf_map_lookup_elem(&flows, key);
			if (!h)
				return 0;
			h->packets += segs;
			h->bytes += bytes;
		}
	} else {
		h->packets += segs;
		h->bytes += bytes;
	}
	/* Bench variant only: extras that find flow_extras full are dropped. */
	count_extras(key, pi, segs);
	return 1;
}
#elif XT_FLOWS == XT_FLOWS_LOCKED
static __always_inline int count_flow(struct flow_key *key, const struct pkt_info *pi,
				      __u64 segs, __u64 bytes)
{
	struct flow_entry *e = bpf_map_lookup_elem(&flows, key);
	if (!e) {
		struct flow_entry init = {};
		add_value(&init.v, pi, segs, bytes, 0);
		if (!bpf_map_update_elem(&flows, key, &init, BPF_NOEXIST))
			return 1;
		e = bpf_map_lookup_elem(&flows, key);
		if (!e)
			return 0;
	}
	/* Held for a dozen adds at most: no calls, no loops inside. */
	bpf_spin_lock(&e->lock);
	add_value(&e->v, pi, segs, bytes, 0);
	bpf_spin_unlock(&e->lock);
	return 1;
}
#else
static __always_inline int count_flow(struct flow_key *key, const struct pkt_info *pi,
				      __u64 segs, __u64 bytes)
{
	struct flow_value *v = bpf_map_lookup_elem(&flows, key);
	if (!v) {
		struct flow_value init = {};
		add_value(&init, pi, segs, bytes, 0);
		if (!bpf_map_update_elem(&flows, key, &init, BPF_NOEXIST))
			return 1;
		v = bpf_map_lookup_elem(&flows, key);
		if (!v)
			return 0;
	}
	add_value(v, pi, segs, bytes, XT_ADD_ATOMIC);
	return 1;
}
#endif

/*
 * Count one parsed frame (`ret` is parse_frame's result). `len` is the frame
 * length the hook sees, `segs` the packets it stands for on the wire (GSO).
 *
 * `key` is used in place, never copied: with a local copy the parser's key no
 * longer escapes, so clang splits it into scalars carried through every branch
 * in spilled registers and stores it again field by field before the lookup
 * (1.9x the instructions; 10-18 ns more per packet, BPF_PROG_TEST_RUN).
 */
static __always_inline void count_frame(struct flow_key *key, const struct pkt_info *pi, int ret,
					__u32 len, __u32 segs, __u32 vlan_hw_present,
					__u8 direction)
{
	__u32 zero = 0;

	/* Bytes as on the wire: each extra GSO segment repeats the headers,
	 * and a tag the kernel moved into metadata was 4 bytes of every frame. */
	__u64 bytes = len;
	if (segs > 1 && ret == PARSE_OK)
		bytes += (__u64)(segs - 1) * pi->hdr_len;
	if (vlan_hw_present)
		bytes += (__u64)VLAN_HLEN * segs;

	struct xtrace_stats *st = bpf_map_lookup_elem(&stats, &zero);
	if (!st)
		return; /* cannot happen: array index 0 always exists */
	st->seen += segs;
	st->seen_bytes += bytes;

	if (ret != PARSE_OK) {
		st->truncated += segs;
		st->truncated_bytes += bytes;
		return;
	}
	if (filtered_out(key)) {
		st->filtered += segs;
		st->filtered_bytes += bytes;
		return;
	}

	if (count_flow(key, pi, segs, bytes)) {
		st->counted += segs;
		st->counted_bytes += bytes;
		return;
	}
	/* Map full (-E2BIG) or out of memory: never lose the count. */
	__u32 idx = (__u32)direction * XT_TYPE_MAX + (key->traffic_type & (XT_TYPE_MAX - 1));
	struct flow_value *ov = bpf_map_lookup_elem(&overflow, &idx);
	if (ov)
		add_value(ov, pi, segs, bytes, 0);
	st->overflowed += segs;
	st->overflowed_bytes += bytes;
}

/* Both XDP programs parse the linear part. A multi-buffer frame (`frags`, a
 * constant) is counted at its whole length, across its fragments. */
static __always_inline int xdp_count(struct xdp_md *ctx, const int frags)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct flow_key key;
	struct pkt_info pi;

	int ret = parse_fresh(data, data_end, &key, &pi, 0, 0, XT_DIR_INGRESS);
	__u32 linear = data_end - data;
	__u32 len = frags ? bpf_xdp_get_buff_len(ctx) : linear;
	/* Headers cut by the end of the linear part continue in the fragments: parse a
	 * copy of the frame's first bytes instead. */
	if (frags && ret != PARSE_OK && linear < len && linear < XDP_HDR_COPY) {
		__u32 zero = 0;
		struct hdr_buf *hb = bpf_map_lookup_elem(&xdp_hdr_copy, &zero);
		/* 1..XDP_HDR_COPY (len > linear), in a form the verifier bounds */
		__u32 n = (((len < XDP_HDR_COPY ? len : XDP_HDR_COPY) - 1) & (XDP_HDR_COPY - 1)) + 1;
		if (hb && bpf_xdp_load_bytes(ctx, 0, hb->b, n) == 0)
			ret = parse_fresh(hb->b, hb->b + n, &key, &pi, 0, 0, XT_DIR_INGRESS);
	}
	count_frame(&key, &pi, ret, len, 1, 0, XT_DIR_INGRESS);
	return XDP_PASS;
}

SEC("xdp")
int xtrace_xdp(struct xdp_md *ctx)
{
	return xdp_count(ctx, 0);
}

/* The multi-buffer variant (Linux >= 5.18): drivers attach it natively at any MTU (a non-frags
 * program is refused above about a page: "Peer MTU is too large to set XDP"). A frame is counted
 * at its whole length, across its fragments; headers that run past the linear part are parsed
 * from a copy (xdp_count). User space loads this one where the kernel takes it, else xtrace_xdp. */
SEC("xdp.frags")
int xtrace_xdp_frags(struct xdp_md *ctx)
{
	return xdp_count(ctx, 1);
}

/* CO-RE flavour of the context: field offsets are relocated against the
 * running kernel's BTF and missing fields can be tested for. */
struct __sk_buff___xt {
	__u32 gso_segs;
} __attribute__((preserve_access_index));

static __always_inline int tc_count(struct __sk_buff *skb, __u8 direction)
{
	__u32 len = skb->len;
	__u32 segs = 1;

	/* gso_segs is in __sk_buff since 5.1: guarded so the object still
	 * loads (counting super-packets as one) where it is missing. */
	struct __sk_buff___xt *core = (void *)skb;
	if (bpf_core_field_exists(core->gso_segs)) {
		__u32 gs = core->gso_segs;
		if (gs > 1)
			segs = gs;
	}

	__u32 vlan_present = skb->vlan_present;
	__u16 vlan_tci = skb->vlan_tci;
	struct flow_key key;
	struct pkt_info pi;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	int ret = parse_fresh(data, data_end, &key, &pi, vlan_present, vlan_tci, direction);
	/* Headers of a non-linear skb may sit in fragments, beyond direct packet
	 * access: only then pull them into the linear part and parse again. A GSO
	 * skb usually has its headers linear and costs no pull. */
	__u32 linear = data_end - data;
	if (ret != PARSE_OK && linear < len && linear < TC_PULL_LEN) {
		bpf_skb_pull_data(skb, len < TC_PULL_LEN ? len : TC_PULL_LEN);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		ret = parse_fresh(data, data_end, &key, &pi, vlan_present, vlan_tci, direction);
	}
	count_frame(&key, &pi, ret, len, segs, vlan_present, direction);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int xtrace_tc_ingress(struct __sk_buff *skb)
{
	return tc_count(skb, XT_DIR_INGRESS);
}

SEC("tc")
int xtrace_tc_egress(struct __sk_buff *skb)
{
	return tc_count(skb, XT_DIR_EGRESS);
}

#if XT_FLOWS == XT_FLOWS_SHARED
/*
 * The flow map as user space reads it (a bpf_iter over `flows`, Linux >= 5.9):
 * one struct flow_record per flow. A syscall read of a shared value is a
 * memcpy, which may tear a u64 that another CPU is adding to (seen on 6.1);
 * here every counter is read with one 8-byte load, which cannot tear.
 * The context types are the kernel's; CO-RE relocates their fields.
 */
struct seq_file;
struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__bpf_map_elem {
	struct bpf_iter_meta *meta;
	void *key;
	void *value;
} __attribute__((preserve_access_index));

#define XT_LOAD64(p) (*(volatile const __u64 *)&(p))

SEC("iter/bpf_map_elem")
int xtrace_read_flows(struct bpf_iter__bpf_map_elem *ctx)
{
	const struct flow_key *key = ctx->key;
	const struct flow_value *v = ctx->value;
	struct flow_record rec;

	if (!key || !v)
		return 0; /* the end of the walk */
	__builtin_memcpy(&rec.key, key, sizeof(rec.key));
	rec.v.packets = XT_LOAD64(v->packets);
	rec.v.bytes = XT_LOAD64(v->bytes);
	rec.v.ecn_ce = XT_LOAD64(v->ecn_ce);
	rec.v.cnp = XT_LOAD64(v->cnp);
	rec.v.fragments = XT_LOAD64(v->fragments);
	rec.v.op_send = XT_LOAD64(v->op_send);
	rec.v.op_write = XT_LOAD64(v->op_write);
	rec.v.op_read_req = XT_LOAD64(v->op_read_req);
	rec.v.op_read_resp = XT_LOAD64(v->op_read_resp);
	rec.v.op_ack = XT_LOAD64(v->op_ack);
	rec.v.op_atomic = XT_LOAD64(v->op_atomic);
	rec.v.op_other = XT_LOAD64(v->op_other);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}
#endif
