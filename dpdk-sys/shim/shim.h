/* Exported wrappers for the static inline functions and macros of DPDK that the data path calls. */
#ifndef SLUICE_DPDK_SHIM_H
#define SLUICE_DPDK_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_cycles.h>
#include <rte_thread.h>
#include <rte_bus_vdev.h>
#include <rte_version.h>
#include <rte_pdump.h>

uint16_t shim_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t shim_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *shim_pktmbuf_alloc(struct rte_mempool *pool);
int shim_pktmbuf_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned int n);
void shim_pktmbuf_free(struct rte_mbuf *m);
uint8_t *shim_mtod(struct rte_mbuf *m);
uint16_t shim_data_len(const struct rte_mbuf *m);
uint32_t shim_pkt_len(const struct rte_mbuf *m);
uint16_t shim_headroom(const struct rte_mbuf *m);
uint16_t shim_tailroom(const struct rte_mbuf *m);
uint16_t shim_port(const struct rte_mbuf *m);
int shim_rss_hash(const struct rte_mbuf *m, uint32_t *hash);
int shim_is_contiguous(const struct rte_mbuf *m);
uint8_t *shim_adj(struct rte_mbuf *m, uint16_t len);
uint8_t *shim_append(struct rte_mbuf *m, uint16_t len);
int shim_trim(struct rte_mbuf *m, uint16_t len);
void shim_prefetch0(const void *p);
unsigned int shim_lcore_id(void);
/* 1 when lcore `lcore` is pinned to CPU `cpu` and to no other. */
int shim_lcore_only_on_cpu(unsigned int lcore, unsigned int cpu);
int shim_errno(void);
uint64_t shim_rdtsc(void);
uint64_t shim_tsc_hz(void);
/* Offsets of the rte_mbuf fields Rust reads inline, and its size, as this compiler lays them out. */
void shim_mbuf_layout(uint32_t out[8]);

#endif
