/* rte_cpuset_t and the CPU_* macros are the GNU cpu_set_t. */
#define _GNU_SOURCE
#include <sched.h>
#include "shim.h"

uint16_t shim_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t shim_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *shim_pktmbuf_alloc(struct rte_mempool *pool) { return rte_pktmbuf_alloc(pool); }

int shim_pktmbuf_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned int n) {
    return rte_pktmbuf_alloc_bulk(pool, mbufs, n);
}

void shim_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

uint8_t *shim_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }

uint16_t shim_data_len(const struct rte_mbuf *m) { return m->data_len; }

uint32_t shim_pkt_len(const struct rte_mbuf *m) { return m->pkt_len; }

uint16_t shim_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }

uint16_t shim_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }

uint16_t shim_port(const struct rte_mbuf *m) { return m->port; }

int shim_rss_hash(const struct rte_mbuf *m, uint32_t *hash) {
    if (m->ol_flags & RTE_MBUF_F_RX_RSS_HASH) {
        *hash = m->hash.rss;
        return 1;
    }
    return 0;
}

int shim_is_contiguous(const struct rte_mbuf *m) { return rte_pktmbuf_is_contiguous(m); }


uint8_t *shim_adj(struct rte_mbuf *m, uint16_t len) { return (uint8_t *)rte_pktmbuf_adj(m, len); }

uint8_t *shim_append(struct rte_mbuf *m, uint16_t len) { return (uint8_t *)rte_pktmbuf_append(m, len); }

int shim_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }

void shim_prefetch0(const void *p) { rte_prefetch0(p); }

unsigned int shim_lcore_id(void) { return rte_lcore_id(); }

int shim_lcore_only_on_cpu(unsigned int lcore, unsigned int cpu)
{
    rte_cpuset_t cpus = rte_lcore_cpuset(lcore);
    return CPU_COUNT(&cpus) == 1 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &cpus);
}

int shim_errno(void) { return rte_errno; }

uint64_t shim_rdtsc(void) { return rte_rdtsc(); }

uint64_t shim_tsc_hz(void) { return rte_get_tsc_hz(); }

void shim_mbuf_layout(uint32_t out[8]) {
    out[0] = offsetof(struct rte_mbuf, buf_addr);
    out[1] = offsetof(struct rte_mbuf, data_off);
    out[2] = offsetof(struct rte_mbuf, nb_segs);
    out[3] = offsetof(struct rte_mbuf, port);
    out[4] = offsetof(struct rte_mbuf, ol_flags);
    out[5] = offsetof(struct rte_mbuf, data_len);
    out[6] = offsetof(struct rte_mbuf, hash);
    out[7] = sizeof(struct rte_mbuf);
}
