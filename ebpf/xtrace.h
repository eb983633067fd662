/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structures shared by the kernel programs (xtrace.bpf.c) and user space
 * (xtrace_catch/layout.py mirrors them; the object's BTF is checked against
 * that mirror when the object is opened). Fixed-width types only, no
 * `packed`, explicit padding: the layout must not depend on the compiler.
 */
#ifndef XTRACE_H
#define XTRACE_H

#include <linux/types.h>

/* Traffic types (flow_key.traffic_type). 0 is "Other" so a zeroed key is valid. */
enum xtrace_traffic_type {
	XT_TYPE_OTHER   = 0,
	XT_TYPE_TCP     = 1,
	XT_TYPE_UDP     = 2,
	XT_TYPE_ICMP    = 3,
	XT_TYPE_ROCE_V2 = 4,
	XT_TYPE_ROCE_V1 = 5,
	XT_TYPE_IPOIB   = 6,
	XT_TYPE_MAX     = 8, /* size of the per-type overflow table */
};

enum xtrace_direction {
	XT_DIR_INGRESS = 0,
	XT_DIR_EGRESS  = 1,
	XT_DIR_MAX     = 2,
};

/* Traffic filter (cfg_filter), the CLI's -f values. */
enum xtrace_filter {
	XT_FILTER_ALL     = 0,
	XT_FILTER_TCP     = 1, /* IP protocol 6 */
	XT_FILTER_UDP     = 2, /* IP protocol 17, RoCE v2 included */
	XT_FILTER_ROCE    = 3, /* RoCE v1 and v2 */
	XT_FILTER_ROCE_V1 = 4,
	XT_FILTER_ROCE_V2 = 5,
	XT_FILTER_IB      = 6, /* InfiniBand transport: RoCE v1, v2 and IPoIB */
};

enum xtrace_link_type {
	XT_LINK_ETHERNET   = 0,
	XT_LINK_INFINIBAND = 1, /* IPoIB netdev: 20-byte pseudo header + 4-byte encap */
};

/*
 * One flow. Addresses are 16 bytes: IPv6 as is, IPv4 as v4-mapped
 * (::ffff:a.b.c.d), RoCE v1 as the GRH's SGID/DGID. Ports and QP in host
 * byte order; ports are 0 for non-first fragments and portless protocols.
 */
struct flow_key {
	__u8  src_addr[16];
	__u8  dst_addr[16];
	__u16 src_port;
	__u16 dst_port;
	__u32 dst_qp;       /* RoCE destination QP (24 bits), else 0 */
	__u16 eth_proto;    /* ethertype after VLAN tags */
	__u16 vlan_id;      /* outer VLAN ID, 0 when untagged */
	__u8  protocol;     /* IP protocol number, 0 when not IP */
	__u8  traffic_type; /* enum xtrace_traffic_type */
	__u8  direction;    /* enum xtrace_direction */
	__u8  pad;
};

/*
 * Per-CPU counters of one flow. Packets and bytes are as on the wire:
 * Ethernet frame without FCS, GSO/GRO super-packets as their segments.
 * The op_* fields split RoCE packets by BTH opcode class.
 */
struct flow_value {
	__u64 packets;
	__u64 bytes;
	__u64 ecn_ce;       /* IP/GRH ECN field == CE (3) */
	__u64 cnp;          /* RoCE CNP, BTH opcode 0x81 */
	__u64 fragments;    /* non-first IP fragments */
	__u64 op_send;      /* SEND first/middle/last/only (+imm, +inv) */
	__u64 op_write;     /* RDMA WRITE first/middle/last/only (+imm) */
	__u64 op_read_req;  /* RDMA READ request */
	__u64 op_read_resp; /* RDMA READ response first/middle/last/only */
	__u64 op_ack;       /* ACK, ATOMIC ACK */
	__u64 op_atomic;    /* compare-swap, fetch-add */
	__u64 op_other;     /* any other opcode (CNP included in cnp only) */
};

/*
 * What xtrace_read_flows writes per flow for user space: the key, then the
 * counters, each read with one 8-byte load.
 */
struct flow_record {
	struct flow_key key;
	struct flow_value v;
};
/* No padding: user space (maps.IterReader) reads key_size + 8 x counters per record. */
_Static_assert(sizeof(struct flow_record) == sizeof(struct flow_key) + sizeof(struct flow_value),
	       "struct flow_record must be its key then its counters");

/*
 * Per-CPU packet accounting. Exactly, for every CPU:
 *   seen = counted + filtered + truncated + overflowed
 * and the same for the *_bytes fields. `counted` packets are in the flow
 * map; `overflowed` ones in the overflow table (map full).
 */
struct xtrace_stats {
	__u64 seen;
	__u64 counted;
	__u64 filtered;
	__u64 truncated;   /* truncated or unparsable headers */
	__u64 overflowed;
	__u64 seen_bytes;
	__u64 counted_bytes;
	__u64 filtered_bytes;
	__u64 truncated_bytes;
	__u64 overflowed_bytes;
};

#define XT_DEFAULT_FLOWS   65536
#define XT_DNS_SERVERS_MAX 64

#endif /* XTRACE_H */
