/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Verdict reason codes: why the XDP program passed or dropped a packet.
 *
 * These numbers never move. They are mirrored by:
 *   - controller/dataplane/reasons.py  class Reason(IntEnum)
 *   - proto/breakwater/v1/reasons.proto enum DropReason
 * and tests/unit/test_reasons.py fails if the three disagree.
 * A retired code keeps its number and becomes BW_REASON_UNUSED_<n>;
 * new codes take the next free number in their range.
 *
 * Ranges: 1-31 pass, 32-63 drop by policy, 64-127 malformed input.
 */
#ifndef BREAKWATER_REASONS_H
#define BREAKWATER_REASONS_H

#define BW_REASON_UNSPECIFIED       0

/* Pass. */
#define BW_PASS_DEFAULT             1  /* no rule matched */
#define BW_PASS_ARP                 2  /* always-pass: ARP */
#define BW_PASS_ND                  3  /* always-pass: IPv6 neighbour discovery (hop limit 255) */
#define BW_PASS_MGMT                4  /* always-pass: configured management prefix */
#define BW_PASS_ALLOW               5  /* allowlist prefix */
#define BW_PASS_NON_IP              6  /* not IPv4/IPv6/ARP (LLDP, ...): left to the stack */
#define BW_PASS_SIGNATURE           7  /* an allow signature matched */
#define BW_PASS_RATE_LIMIT          8  /* a rate-limit signature matched, within its rate */
#define BW_PASS_VERIFIED            9  /* under challenge: the source answered a challenge */
#define BW_PASS_FLOW                10 /* under challenge: a connection seen open (flows_v4) */

/* Drop by policy. */
#define BW_DROP_DENY_SRC            32 /* exact source address in the denylist */
#define BW_DROP_DENY_PREFIX         33 /* source inside a denied prefix */
#define BW_DROP_SIGNATURE           34 /* a drop signature matched */
#define BW_DROP_RATE_LIMIT          35 /* a rate-limit signature matched, over its rate */
#define BW_DROP_CHALLENGE_SYN       36 /* SYN answered with a challenge SYN-ACK (XDP_TX), not delivered */
#define BW_DROP_CHALLENGE_ANSWER    37 /* RST answering a challenge correctly: source verified, RST consumed */
#define BW_DROP_CHALLENGE_FORGED    38 /* under challenge: RST whose cookie does not check */
#define BW_DROP_UNVERIFIED          39 /* under challenge: non-SYN packet of an unknown connection from an unverified source */
#define BW_DROP_CHALLENGE_BAD_SYN   40 /* under challenge: SYN not answered: bad TCP checksum, or it carries data */

/* Malformed input: the packet cannot be parsed as far as its headers claim. */
#define BW_MALFORMED_ETH            64 /* shorter than an Ethernet header */
#define BW_MALFORMED_VLAN           65 /* VLAN tag truncated, or more than BW_MAX_VLAN_TAGS tags */
#define BW_MALFORMED_IPV4           66 /* IPv4 header truncated, version != 4 or IHL < 5 */
#define BW_MALFORMED_IPV4_OPTIONS   67 /* IHL points beyond the end of the packet */
#define BW_MALFORMED_IPV6           68 /* IPv6 header truncated or version != 6 */
#define BW_MALFORMED_IPV6_EXT       69 /* extension header truncated */
#define BW_MALFORMED_IPV6_CHAIN     70 /* more than BW_MAX_IPV6_EXT extension headers */
#define BW_MALFORMED_L4             71 /* TCP/UDP/SCTP/ICMP/ICMPv6/GRE header truncated */

/* One past the highest code: sizes the per-reason counter array. */
#define BW_REASON_MAX               128

#endif
