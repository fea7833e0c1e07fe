/* A new IPv4 source in every run of BPF_PROG_TEST_RUN: the flood run of bench/kernel_cost.py.
 *
 * The frame's source address is rewritten in place before the wrapped program sees it, so
 * that one test run with repeat N gives N distinct sources with the program's code and small
 * maps warm, as in a flood at line rate, and only its table's memory cold. Every contender,
 * the empty program included, pays the same rewrite, so it cancels in the differences to the
 * empty program.
 *
 * The sources are those of a spoofed flood: scattered, not consecutive. Source n (a per-CPU
 * count from 1) is 10.x.y.z with x.y.z = scramble(n), a bijection of 24 bits (a multiply by an
 * odd constant, then an xor-shift), so 2^24 runs give 2^24 distinct sources. Consecutive
 * addresses would flatter a table whose hash maps them to sets in a regular pattern (the
 * issue-12 prototype's did: 0.26 of the first version's added cost with consecutive sources,
 * as much as the product with scattered ones). bench/sketch_accuracy.py computes the same
 * addresses (flood_sources).
 *
 * bench/contenders.py compiles this file's text after the wrapped program's (the product's
 * bpf/xdp_ip_counter.c, bench/programs/first_version.c or an empty program), whose entry point
 * it renames to wrapped_main, declared static inline ahead of it. The program is prepended as
 * text, not #included: bcc rewrites map calls such as sources.lookup() only in the main file.
 * The wrapper takes the wrapped program's name, xdp_ip_counter, so that the product's loader
 * (xdp_ip_counter.bpf.DataPath) loads it as it loads the product.
 */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#define NETWORK 0x0A000000 /* 10.0.0.0/8 */
#define SCRAMBLE 0x9E3779B1U

BPF_PERCPU_ARRAY(next_source, __u32, 1);

int xdp_ip_counter(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct iphdr *iph = data + sizeof(struct ethhdr);
    __u32 zero = 0;
    __u32 *next = next_source.lookup(&zero);
    if (next && (void *)(iph + 1) <= end) {
        *next += 1;
        __u32 x = (*next * SCRAMBLE) & 0xFFFFFF;
        x ^= x >> 12;
        iph->saddr = __builtin_bswap32(NETWORK | x);
    }
    return wrapped_main(ctx);
}
