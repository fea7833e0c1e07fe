/* A new IPv4 source in every run of BPF_PROG_TEST_RUN, for bench/prototype_cost.py: the frame's
 * source address is rewritten in place (10.128.0.0 + a per-CPU count) before the wrapped
 * program sees it, so that one test run with repeat N gives N distinct sources with the
 * program's code and its small maps warm, as in a flood at line rate, and only the table's
 * memory cold. Every contender, the empty program included, pays the same rewrite, so it
 * cancels in the differences to the empty program.
 *
 * prototype_cost.py compiles this file's text after the wrapped program's (bpf/xdp_ip_counter.c
 * with its own -D switches, bench/prototypes/set_assoc.c, or an empty program), whose entry
 * point it renames to wrapped_main, declared static inline ahead of it. The program is
 * prepended as text, not #included: bcc rewrites map calls such as sources.lookup() only in
 * the main file.
 */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#define FIRST_SOURCE 0x0A800000 /* 10.128.0.0 */

BPF_PERCPU_ARRAY(next_source, __u32, 1);

int varying_source(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct iphdr *iph = data + sizeof(struct ethhdr);
    __u32 zero = 0;
    __u32 *next = next_source.lookup(&zero);
    if (next && (void *)(iph + 1) <= end) {
        *next += 1;
        iph->saddr = __builtin_bswap32(FIRST_SOURCE + *next);
    }
    return wrapped_main(ctx);
}
