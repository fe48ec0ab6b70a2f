//! The thin safe layer over DPDK: EAL, packet mempools, owned mbufs, ports with per-worker queues, and pinned
//! worker threads. Every `unsafe` block of the project outside `dpdk-sys` is here, each with its reason.
//!
//! How the pieces fit:
//! ```text
//! let eal = Eal::init(&args)?;                                 // once per process
//! let pool = Arc::new(Mempool::new("rx", 8191, 256, DEFAULT_DATA_ROOM, SOCKET_ANY)?);
//! let port = Port::configure(&eal, eal.port_by_name("net_ring0").unwrap(), &PortConfig::default(), &pool)?;
//! let (mut rx, mut tx) = (port.rx_queue(0)?, port.tx_queue(0, &pool)?);   // one pair per worker
//! spawn_worker(1, "worker-0", move || { /* rx.rx_burst(..) / tx.tx_burst(..) */ })?;
//! ```
//! Without hugepages pass `--no-huge -m 1024` to the EAL (plus `--in-memory` or a unique `--file-prefix` so that
//! several processes can run at once). With hugepages reserved (`scripts/setup.sh` reserves 2 MB pages through
//! /proc/sys/vm/nr_hugepages and mounts hugetlbfs) drop `--no-huge -m`.
//!
//! Workers are plain threads pinned to an explicit CPU and registered with `rte_thread_register`, rather than
//! EAL lcores launched by `rte_eal_remote_launch`: a registered thread gets an lcore id (so mempool per-lcore
//! caches work), while the closure keeps Rust ownership of its queues and state, and the pinning is explicit (a
//! thread spawned after `rte_eal_init` would otherwise inherit the main thread's affinity).
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use dataplane::io::{Burst, Frame, RxQueue as RxQueueTrait, TxQueue as TxQueueTrait, MAX_BURST};
use dpdk_sys as sys;
use thiserror::Error;

/// Data room of the default mbuf (2048 bytes of frame plus the headroom).
pub const DEFAULT_DATA_ROOM: u16 = sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16;
/// Any NUMA socket.
pub const SOCKET_ANY: i32 = -1;

static EAL_STARTED: AtomicBool = AtomicBool::new(false);

/// The text of DPDK's current error.
fn last_error() -> (i32, String) {
    // SAFETY: rte_errno is a per-thread integer; reading it has no precondition.
    let code = unsafe { sys::shim_errno() };
    (code, error_text(code))
}

fn error_text(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string for any code.
    let text = unsafe { CStr::from_ptr(sys::rte_strerror(code)) };
    text.to_string_lossy().into_owned()
}

/// Why the EAL did not start.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EalError {
    #[error("the DPDK EAL is already initialised in this process (it can be initialised once)")]
    AlreadyInitialised,
    #[error("EAL argument {0:?} contains a NUL byte")]
    NulInArgument(String),
    #[error("the DPDK EAL failed to start ({code}: {message}); check the [eal] arguments: {args}")]
    InitFailed {
        code: i32,
        message: String,
        args: String,
    },
    #[error(
        "device {name:?} from --vdev did not become a port (a missing file, a bad option or a driver that is not \
         installed); the EAL log above says why"
    )]
    DeviceNotProbed { name: String },
}

/// The version of the DPDK library linked at run time (`rte_version()`, e.g. "DPDK 22.11.11"); it needs no EAL.
pub fn version() -> String {
    // SAFETY: rte_version returns a pointer to a static NUL-terminated string and has no precondition.
    let text = unsafe { CStr::from_ptr(sys::rte_version()) };
    text.to_string_lossy().into_owned()
}

/// The running EAL. Dropping it cleans the EAL up; ports and pools must be dropped before it.
#[derive(Debug)]
pub struct Eal {
    _private: (),
}

/// The device names the `--vdev` arguments ask for.
fn requested_vdevs(args: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = if let Some(value) = arg.strip_prefix("--vdev=") {
            Some(value.to_owned())
        } else if arg == "--vdev" {
            iter.next().cloned()
        } else {
            None
        };
        if let Some(value) = value {
            let name = value
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

impl Eal {
    /// Starts the EAL with `args` (without the program name). Fails, rather than aborting, on bad arguments, and
    /// checks that every `--vdev` became a port (the EAL itself does not fail when one does not).
    pub fn init(args: &[String]) -> Result<Eal, EalError> {
        if EAL_STARTED.swap(true, Ordering::SeqCst) {
            return Err(EalError::AlreadyInitialised);
        }
        let mut owned = Vec::with_capacity(args.len() + 1);
        owned.push(CString::new("sluice").expect("static name has no NUL"));
        for arg in args {
            owned.push(
                CString::new(arg.as_str()).map_err(|_| EalError::NulInArgument(arg.clone()))?,
            );
        }
        // The EAL keeps pointers into argv for the life of the process: leak the strings on purpose.
        let mut argv: Vec<*mut c_char> = owned.into_iter().map(CString::into_raw).collect();
        let argc = argv.len() as c_int;
        let argv_ptr = argv.as_mut_ptr();
        std::mem::forget(argv);
        // SAFETY: argv holds argc valid NUL-terminated strings that live forever; EAL init runs once per process
        // (guarded by EAL_STARTED).
        let result = unsafe { sys::rte_eal_init(argc, argv_ptr) };
        if result < 0 {
            let (code, message) = last_error();
            return Err(EalError::InitFailed {
                code,
                message,
                args: args.join(" "),
            });
        }
        let eal = Eal { _private: () };
        for name in requested_vdevs(args) {
            if eal.port_by_name(&name).is_none() {
                return Err(EalError::DeviceNotProbed { name });
            }
        }
        Ok(eal)
    }

    /// Lets `dpdk-dumpcap` capture this process's ports: registers the packet-capture server (`rte_pdump_init`)
    /// that a capturing secondary process asks to install its callbacks. Until a capture starts no callback is
    /// installed, so the bursts pay nothing for it. Needs a process secondaries can attach to (see
    /// [`secondary_attach_blocked_by`]).
    pub fn allow_packet_capture(&self) -> Result<(), String> {
        // SAFETY: called after rte_eal_init succeeded; it registers a multi-process action and reserves a
        // memzone, nothing a worker holds.
        let result = unsafe { sys::rte_pdump_init() };
        if result != 0 {
            let (code, message) = last_error();
            return Err(format!("rte_pdump_init failed ({code}: {message})"));
        }
        Ok(())
    }

    /// The port a device (vdev name such as `net_ring0`, or PCI address) became.
    pub fn port_by_name(&self, name: &str) -> Option<u16> {
        let name = CString::new(name).ok()?;
        let mut port = 0u16;
        // SAFETY: name is NUL-terminated and port is a valid out pointer.
        let found = unsafe { sys::rte_eth_dev_get_port_by_name(name.as_ptr(), &mut port) };
        (found == 0).then_some(port)
    }

    /// Every available port.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        let mut port = 0u16;
        loop {
            // SAFETY: rte_eth_find_next only reads the device table.
            let next = unsafe { sys::rte_eth_find_next(port) };
            if usize::from(next) >= sys::RTE_MAX_ETHPORTS as usize {
                break;
            }
            ports.push(next);
            port = next + 1;
        }
        ports
    }

    /// The name of port `port`.
    pub fn port_name(&self, port: u16) -> Option<String> {
        let mut buffer = [0 as c_char; 64];
        // SAFETY: the buffer holds RTE_ETH_NAME_MAX_LEN (64) bytes as the function requires.
        let result = unsafe { sys::rte_eth_dev_get_name_by_port(port, buffer.as_mut_ptr()) };
        if result != 0 {
            return None;
        }
        // SAFETY: on success the buffer holds a NUL-terminated name.
        Some(
            unsafe { CStr::from_ptr(buffer.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// Why secondary processes (`dpdk-dumpcap`, `dpdk-proc-info`) cannot attach to a primary started with the EAL
/// arguments `args`, or `None` when they can. They map the primary's hugepage files, found through its runtime
/// directory (`/var/run/dpdk/<file prefix>`), and ask it for resources over its multi-process socket: memory
/// without hugepages (`--no-huge`), without shared files (`--in-memory`, `--no-shconf`) or with the files unlinked
/// (`--huge-unlink`, `--huge-unlink=always`) leaves them nothing to map or no one to ask.
pub fn secondary_attach_blocked_by(args: &[String]) -> Option<String> {
    for arg in args {
        let reason = match arg.as_str() {
            "--no-huge" => "memory without hugepages cannot be shared",
            "--in-memory" => "no runtime files for a secondary process to find",
            "--no-shconf" => "no shared configuration for a secondary process to read",
            "--huge-unlink" | "--huge-unlink=always" => {
                "the hugepage files are unlinked once mapped (pass --huge-unlink=never)"
            }
            _ => continue,
        };
        return Some(format!("{arg}: {reason}"));
    }
    None
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: called once, after the ports and pools the caller owned were dropped.
        unsafe {
            sys::rte_eal_cleanup();
        }
    }
}

/// Errors of pools, ports and workers.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DpdkError {
    #[error("mempool {name:?}: {message}")]
    Mempool { name: String, message: String },
    #[error("port {port}: {operation} failed ({code}: {message})")]
    Port {
        port: u16,
        operation: &'static str,
        code: i32,
        message: String,
    },
    #[error("port {port} has {available} {kind} queues; queue {queue} does not exist")]
    NoSuchQueue {
        port: u16,
        queue: u16,
        available: u16,
        kind: &'static str,
    },
    #[error("worker thread: {0}")]
    Worker(String),
}

/// A pool of packet buffers.
#[derive(Debug)]
pub struct Mempool {
    pool: NonNull<sys::rte_mempool>,
    name: String,
}

// SAFETY: a DPDK mempool is safe to use from several threads (its operations are lock-free per lcore cache).
unsafe impl Send for Mempool {}
// SAFETY: as above; shared references only allocate and count.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// A pktmbuf pool of `size` buffers with `cache` per-lcore cached buffers and `data_room` bytes each.
    pub fn new(
        name: &str,
        size: u32,
        cache: u32,
        data_room: u16,
        socket: i32,
    ) -> Result<Mempool, DpdkError> {
        let c_name = CString::new(name).map_err(|_| DpdkError::Mempool {
            name: name.to_owned(),
            message: "name contains NUL".into(),
        })?;
        // SAFETY: the name is NUL-terminated; the EAL is running (a Mempool can only be made after Eal::init in
        // practice: without it DPDK returns NULL with rte_errno set, handled below).
        let pool = unsafe {
            sys::rte_pktmbuf_pool_create(c_name.as_ptr(), size, cache, 0, data_room, socket)
        };
        match NonNull::new(pool) {
            Some(pool) => Ok(Mempool {
                pool,
                name: name.to_owned(),
            }),
            None => Err(DpdkError::Mempool {
                name: name.to_owned(),
                message: last_error().1,
            }),
        }
    }

    /// Buffers handed out and not yet returned.
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool pointer is valid for the life of self.
        unsafe { sys::rte_mempool_in_use_count(self.pool.as_ptr()) }
    }

    /// Buffers free in the pool.
    pub fn available(&self) -> u32 {
        // SAFETY: the pool pointer is valid for the life of self.
        unsafe { sys::rte_mempool_avail_count(self.pool.as_ptr()) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.pool.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: the pool is no longer used by any port (ports borrow it and are dropped first) and buffers
        // still out keep pointing into memory DPDK owns until EAL cleanup.
        unsafe { sys::rte_mempool_free(self.pool.as_ptr()) }
    }
}

/// An owned packet buffer (single segment); dropping it returns it to its pool.
///
/// `repr(transparent)` over the mbuf pointer, so a burst of `Mbuf`s is the `struct rte_mbuf *` array the burst
/// functions take: received and transmitted bursts pass without copying. The fields the data path reads (data
/// offset and length, offload flags, RSS hash) are read inline from bindgen's layout of `struct rte_mbuf`, which
/// a test checks against the C compiler's offsets.
#[derive(Debug)]
#[repr(transparent)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an mbuf is owned by exactly one Mbuf value; moving it to another thread moves that ownership.
unsafe impl Send for Mbuf {}

const OL_RSS_HASH: u64 = sys::RTE_MBUF_F_RX_RSS_HASH as u64;
const OL_IP_CKSUM_MASK: u64 = sys::RTE_MBUF_F_RX_IP_CKSUM_MASK as u64;
const OL_IP_CKSUM_GOOD: u64 = sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD as u64;

impl Mbuf {
    /// A new empty buffer from `pool`, or `None` when the pool is empty.
    pub fn alloc(pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: the pool pointer is valid.
        NonNull::new(unsafe { sys::shim_pktmbuf_alloc(pool.as_ptr()) }).map(Mbuf)
    }

    fn as_ptr(&self) -> *mut sys::rte_mbuf {
        self.0.as_ptr()
    }

    #[inline(always)]
    fn header(&self) -> &sys::rte_mbuf {
        // SAFETY: self owns a valid mbuf for its whole life; the shared borrow of self keeps it from changing.
        unsafe { self.0.as_ref() }
    }

    /// Length of the first segment's data.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.header().data_len)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The port the buffer was received on.
    #[inline]
    pub fn port(&self) -> u16 {
        self.header().port
    }

    /// Whether the frame is in one segment (sluice only forwards those).
    pub fn is_contiguous(&self) -> bool {
        self.header().nb_segs == 1
    }

    #[inline(always)]
    fn data_ptr(&self) -> *mut u8 {
        let header = self.header();
        // buf_addr + data_off is rte_pktmbuf_mtod: the first byte of the frame inside the buffer.
        header
            .buf_addr
            .cast::<u8>()
            .wrapping_add(usize::from(header.data_off))
    }

    /// Bytes of the first segment.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: the first segment's data pointer addresses `data_len` initialised bytes owned by this mbuf,
        // valid while self is borrowed.
        unsafe { std::slice::from_raw_parts(self.data_ptr(), self.len()) }
    }

    /// Mutable bytes of the first segment.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as data(); the exclusive borrow of self makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr(), self.len()) }
    }

    /// Grows the data by `len` bytes at the front; false when the headroom is too small. Inline, as
    /// `rte_pktmbuf_prepend` is: every TUN frame grows by its outer header.
    #[inline]
    pub fn prepend(&mut self, len: u16) -> bool {
        // SAFETY: self owns a valid mbuf for its whole life; the exclusive borrow of self makes this the only
        // reference to its header.
        let header = unsafe { self.0.as_mut() };
        // The headroom is the data offset (rte_pktmbuf_headroom).
        if len > header.data_off {
            return false;
        }
        // As DPDK's: the lengths cannot wrap, a buffer's offset and data together fitting in its 16-bit length.
        header.data_off -= len;
        header.data_len = header.data_len.wrapping_add(len);
        header.pkt_len = header.pkt_len.wrapping_add(u32::from(len));
        true
    }

    /// Removes `len` bytes from the front; false when the data is shorter.
    pub fn adj(&mut self, len: u16) -> bool {
        // SAFETY: self owns a valid mbuf; DPDK checks the length.
        !unsafe { sys::shim_adj(self.as_ptr(), len) }.is_null()
    }

    /// Grows the data by `len` bytes at the end; false when the tailroom is too small.
    pub fn append(&mut self, len: u16) -> bool {
        // SAFETY: self owns a valid mbuf; DPDK checks the tailroom.
        !unsafe { sys::shim_append(self.as_ptr(), len) }.is_null()
    }

    /// Removes `len` bytes from the end; false when the data is shorter.
    pub fn trim(&mut self, len: u16) -> bool {
        // SAFETY: self owns a valid mbuf; DPDK checks the length.
        unsafe { sys::shim_trim(self.as_ptr(), len) == 0 }
    }

    /// The device's RSS hash, when it set one.
    #[inline]
    pub fn rss_hash(&self) -> Option<u32> {
        let header = self.header();
        if header.ol_flags & OL_RSS_HASH == 0 {
            return None;
        }
        // SAFETY: `hash.rss` is the union member the driver writes when it sets RTE_MBUF_F_RX_RSS_HASH.
        Some(unsafe { header.__bindgen_anon_2.hash.rss })
    }

    /// Whether the device verified the IPv4 header checksum and found it good.
    #[inline]
    pub fn ipv4_checksum_good(&self) -> bool {
        self.header().ol_flags & OL_IP_CKSUM_MASK == OL_IP_CKSUM_GOOD
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: self owns the mbuf and nothing uses it after this.
        unsafe { sys::shim_pktmbuf_free(self.as_ptr()) }
    }
}

/// Hints the CPU to load the cache line at `address` (any address: a prefetch never faults). Lent to the
/// connection table as its prefetch hook.
#[inline(always)]
pub fn prefetch_line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint with no architectural effect; it is defined for every address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Asks the kernel to back the 2 MiB-aligned part of the `bytes` bytes at `start` with transparent huge pages: a
/// hint for large tables allocated and not yet touched (the connection table's memory hook). Failure (no THP, or
/// THP `never`) changes nothing.
pub fn advise_huge_pages(start: *mut u8, bytes: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    let first = (start as usize).next_multiple_of(HUGE_PAGE);
    let end = (start as usize).saturating_add(bytes) / HUGE_PAGE * HUGE_PAGE;
    if end <= first {
        return;
    }
    // SAFETY: MADV_HUGEPAGE only changes how the kernel backs pages in the range; it never changes their contents
    // or whether they are mapped, and for a range that is not mapped the call fails with ENOMEM and does nothing.
    unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
}

impl Frame for Mbuf {
    #[inline]
    fn data(&self) -> &[u8] {
        Mbuf::data(self)
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        Mbuf::data_mut(self)
    }

    #[inline]
    fn prepend(&mut self, len: usize) -> bool {
        u16::try_from(len).is_ok_and(|len| Mbuf::prepend(self, len))
    }

    #[inline]
    fn resize(&mut self, len: usize) -> bool {
        let current = self.len();
        match len.cmp(&current) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Greater => {
                u16::try_from(len - current).is_ok_and(|extra| self.append(extra))
            }
            std::cmp::Ordering::Less => {
                u16::try_from(current - len).is_ok_and(|cut| self.trim(cut))
            }
        }
    }

    #[inline]
    fn rss_hash(&self) -> Option<u32> {
        Mbuf::rss_hash(self)
    }

    #[inline]
    fn ipv4_checksum_good(&self) -> bool {
        Mbuf::ipv4_checksum_good(self)
    }

    #[inline]
    fn prefetch(&self) {
        prefetch_line(self.data_ptr());
    }

    #[inline(always)]
    fn prefetch_address(address: *const u8) {
        prefetch_line(address);
    }

    fn free_burst(frames: &mut Burst<Mbuf>) {
        let count = frames.len();
        if count == 0 {
            return;
        }
        // SAFETY: Mbuf is repr(transparent) over the mbuf pointer, so the burst is an array of `count` valid mbuf
        // pointers this burst owns; after the bulk free the length is set to zero without running Drop, so no
        // mbuf is freed twice.
        unsafe {
            sys::rte_pktmbuf_free_bulk(frames.as_mut_ptr().cast(), count as u32);
            frames.set_len(0);
        }
    }
}

/// How to set a port up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortConfig {
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// Spread received flows over the rx queues with this Toeplitz key where the device can.
    pub rss_key: Option<[u8; 40]>,
    pub mtu: Option<u16>,
    pub promiscuous: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            rss_key: None,
            mtu: None,
            promiscuous: true,
        }
    }
}

/// What a device is and can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub driver: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    /// Flow types the device can hash for RSS (0: no RSS).
    pub rss_offloads: u64,
    pub rss_key_size: u8,
    /// Receive offloads the device offers (`RTE_ETH_RX_OFFLOAD_*`).
    pub rx_offloads: u64,
}

/// Port counters as the device reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_no_mbuf: u64,
}

/// Link state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    pub speed_mbps: u32,
}

/// A configured, started port. Dropping it stops and closes the device (net_pcap writes its file then).
#[derive(Debug)]
pub struct Port {
    id: u16,
    rx_queues: u16,
    tx_queues: u16,
    rss: bool,
    /// The MAC the configuration gave the port, when the device would not take it: sluice uses it in software
    /// (as the source of what it sends, and to accept frames on a promiscuous port).
    configured_mac: Option<[u8; 6]>,
    /// The pool the receive queues fill from: held so that no safe code can free it under a running port.
    _pool: std::sync::Arc<Mempool>,
}

fn port_error(port: u16, operation: &'static str, code: c_int) -> DpdkError {
    let code = if code < 0 { -code } else { last_error().0 };
    DpdkError::Port {
        port,
        operation,
        code,
        message: error_text(code),
    }
}

impl Port {
    /// Configures port `id` with `config`, sets up its queues with buffers from `pool`, and starts it.
    pub fn configure(
        _eal: &Eal,
        id: u16,
        config: &PortConfig,
        pool: &std::sync::Arc<Mempool>,
    ) -> Result<Port, DpdkError> {
        let info = device_info(id)?;
        let mut conf = sys::rte_eth_conf::default();
        let mut rss = false;
        let mut key = config.rss_key.unwrap_or([0; 40]);
        if config.rss_key.is_some() && info.rss_offloads != 0 && config.rx_queues > 1 {
            rss = true;
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
            conf.rx_adv_conf.rss_conf.rss_key_len =
                (info.rss_key_size as usize).min(key.len()) as u8;
            conf.rx_adv_conf.rss_conf.rss_hf =
                u64::from(sys::RTE_ETH_RSS_IP | sys::RTE_ETH_RSS_TCP | sys::RTE_ETH_RSS_UDP)
                    & info.rss_offloads;
        }
        if let Some(mtu) = config.mtu {
            conf.rxmode.mtu = u32::from(mtu);
        }
        // What the device can tell about each frame saves the worker work: a verified IPv4 header checksum, and
        // the RSS hash when the device spreads flows.
        let mut wanted = u64::from(sys::RTE_ETH_RX_OFFLOAD_IPV4_CKSUM);
        if rss {
            wanted |= u64::from(sys::RTE_ETH_RX_OFFLOAD_RSS_HASH);
        }
        conf.rxmode.offloads = wanted & info.rx_offloads;
        // SAFETY: conf is a valid, fully initialised configuration; DPDK copies what it needs (including the key).
        let result =
            unsafe { sys::rte_eth_dev_configure(id, config.rx_queues, config.tx_queues, &conf) };
        if result != 0 {
            return Err(port_error(id, "configure", result));
        }
        let (mut rx_descriptors, mut tx_descriptors) =
            (config.rx_descriptors, config.tx_descriptors);
        // SAFETY: both pointers are valid for the call.
        let result = unsafe {
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rx_descriptors, &mut tx_descriptors)
        };
        if result != 0 {
            return Err(port_error(id, "adjusting descriptor counts", result));
        }
        // SAFETY: reading the port's socket has no precondition.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        for queue in 0..config.rx_queues {
            // SAFETY: the port is configured; a NULL rxconf selects the driver default; the port holds the pool, so
            // it outlives the queues.
            let result = unsafe {
                sys::rte_eth_rx_queue_setup(
                    id,
                    queue,
                    rx_descriptors,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            if result != 0 {
                return Err(port_error(id, "rx queue setup", result));
            }
        }
        for queue in 0..config.tx_queues {
            // SAFETY: the port is configured; a NULL txconf selects the driver default.
            let result = unsafe {
                sys::rte_eth_tx_queue_setup(id, queue, tx_descriptors, socket, std::ptr::null())
            };
            if result != 0 {
                return Err(port_error(id, "tx queue setup", result));
            }
        }
        if config.promiscuous {
            // SAFETY: the port is configured. Devices without the mode (some vdevs) report an error we ignore.
            unsafe {
                sys::rte_eth_promiscuous_enable(id);
            }
        }
        // SAFETY: the port and its queues are set up.
        let result = unsafe { sys::rte_eth_dev_start(id) };
        if result != 0 {
            return Err(port_error(id, "start", result));
        }
        Ok(Port {
            id,
            rx_queues: config.rx_queues,
            tx_queues: config.tx_queues,
            rss,
            configured_mac: None,
            _pool: std::sync::Arc::clone(pool),
        })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    /// Whether the device spreads received flows with the configured RSS key.
    pub fn has_rss(&self) -> bool {
        self.rss
    }

    /// The handle of rx queue `queue`, to be owned by one worker.
    pub fn rx_queue(&self, queue: u16) -> Result<RxQueue, DpdkError> {
        if queue >= self.rx_queues {
            return Err(DpdkError::NoSuchQueue {
                port: self.id,
                queue,
                available: self.rx_queues,
                kind: "rx",
            });
        }
        Ok(RxQueue {
            port: self.id,
            queue,
        })
    }

    /// The handle of tx queue `queue`, to be owned by one worker; `pool` provides buffers for frames the worker
    /// originates.
    pub fn tx_queue(
        &self,
        queue: u16,
        pool: &std::sync::Arc<Mempool>,
    ) -> Result<TxQueue, DpdkError> {
        if queue >= self.tx_queues {
            return Err(DpdkError::NoSuchQueue {
                port: self.id,
                queue,
                available: self.tx_queues,
                kind: "tx",
            });
        }
        Ok(TxQueue {
            port: self.id,
            queue,
            pool: std::sync::Arc::clone(pool),
        })
    }

    /// Gives the port the MAC `mac`. Returns whether the device took it; a device that cannot (net_pcap, for one)
    /// keeps its own, and [`Port::mac_address`] answers `mac` all the same.
    pub fn set_mac_address(&mut self, mac: [u8; 6]) -> bool {
        let mut addr = sys::rte_ether_addr { addr_bytes: mac };
        // SAFETY: addr is a valid ether address for the duration of the call.
        let result = unsafe { sys::rte_eth_dev_default_mac_addr_set(self.id, &mut addr) };
        self.configured_mac = Some(mac);
        result == 0
    }

    /// The port's MAC address (the configured one, when the configuration set it).
    pub fn mac_address(&self) -> Result<[u8; 6], DpdkError> {
        if let Some(mac) = self.configured_mac {
            return Ok(mac);
        }
        let mut addr = sys::rte_ether_addr::default();
        // SAFETY: addr is a valid out pointer.
        let result = unsafe { sys::rte_eth_macaddr_get(self.id, &mut addr) };
        if result != 0 {
            return Err(port_error(self.id, "reading the MAC address", result));
        }
        Ok(addr.addr_bytes)
    }

    pub fn link(&self) -> Result<Link, DpdkError> {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: link is a valid out pointer.
        let result = unsafe { sys::rte_eth_link_get_nowait(self.id, &mut link) };
        if result != 0 {
            return Err(port_error(self.id, "reading the link", result));
        }
        Ok(Link {
            up: link.link_status() != 0,
            speed_mbps: link.link_speed,
        })
    }

    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        port_stats(self.id)
    }

    pub fn device_info(&self) -> Result<DeviceInfo, DpdkError> {
        device_info(self.id)
    }

    /// A handle that reads this port's counters from another place (the control thread's metrics) without
    /// borrowing the port.
    pub fn stats_reader(&self) -> PortStatsReader {
        PortStatsReader { id: self.id }
    }
}

/// Reads one port's counters (`rte_eth_stats_get`) by its id. Once the port is closed, reads fail with an error:
/// DPDK checks the id against its own device table before touching the device.
#[derive(Clone, Copy, Debug)]
pub struct PortStatsReader {
    id: u16,
}

impl PortStatsReader {
    pub fn port(&self) -> u16 {
        self.id
    }

    pub fn read(&self) -> Result<PortStats, DpdkError> {
        port_stats(self.id)
    }
}

fn port_stats(id: u16) -> Result<PortStats, DpdkError> {
    let mut stats = sys::rte_eth_stats::default();
    // SAFETY: stats is a valid out pointer; rte_eth_stats_get validates the port id (an unused or closed port
    // returns -ENODEV) before reading the device.
    let result = unsafe { sys::rte_eth_stats_get(id, &mut stats) };
    if result != 0 {
        return Err(port_error(id, "reading statistics", result));
    }
    Ok(PortStats {
        rx_packets: stats.ipackets,
        tx_packets: stats.opackets,
        rx_bytes: stats.ibytes,
        tx_bytes: stats.obytes,
        rx_missed: stats.imissed,
        rx_errors: stats.ierrors,
        tx_errors: stats.oerrors,
        rx_no_mbuf: stats.rx_nombuf,
    })
}

fn device_info(id: u16) -> Result<DeviceInfo, DpdkError> {
    let mut info = sys::rte_eth_dev_info::default();
    // SAFETY: info is a valid out pointer.
    let result = unsafe { sys::rte_eth_dev_info_get(id, &mut info) };
    if result != 0 {
        return Err(port_error(id, "reading device information", result));
    }
    let driver = if info.driver_name.is_null() {
        String::new()
    } else {
        // SAFETY: a non-NULL driver name is a static NUL-terminated string of the driver.
        unsafe { CStr::from_ptr(info.driver_name) }
            .to_string_lossy()
            .into_owned()
    };
    Ok(DeviceInfo {
        driver,
        max_rx_queues: info.max_rx_queues,
        max_tx_queues: info.max_tx_queues,
        rss_offloads: info.flow_type_rss_offloads,
        rss_key_size: info.hash_key_size,
        rx_offloads: info.rx_offload_capa,
    })
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the port was started by us; no queue handle is used after the port is dropped (workers are
        // joined first by every caller).
        unsafe {
            sys::rte_eth_dev_stop(self.id);
            sys::rte_eth_dev_close(self.id);
        }
    }
}

/// One rx queue of a port, owned by one worker.
#[derive(Debug)]
pub struct RxQueue {
    port: u16,
    queue: u16,
}

impl RxQueue {
    /// Receives up to `max` frames into `burst`; returns how many. Never allocates or copies the pointers.
    #[inline]
    pub fn rx_burst(&mut self, burst: &mut Burst<Mbuf>, max: usize) -> usize {
        let len = burst.len();
        let room = burst.remaining_capacity().min(max).min(MAX_BURST);
        // SAFETY: Mbuf is repr(transparent) over a non-null mbuf pointer, so the burst's spare capacity is room
        // for `room` such pointers; the driver writes `received` valid mbufs it hands over to us, and only those
        // become part of the burst. This queue is owned by one thread (RxQueue is neither Sync nor Clone).
        unsafe {
            let spare = burst.as_mut_ptr().add(len).cast::<*mut sys::rte_mbuf>();
            let received = sys::shim_rx_burst(self.port, self.queue, spare, room as u16);
            burst.set_len(len + usize::from(received));
            usize::from(received)
        }
    }
}

impl RxQueueTrait for RxQueue {
    type Frame = Mbuf;

    #[inline]
    fn rx_burst(&mut self, burst: &mut Burst<Mbuf>, max: usize) -> usize {
        RxQueue::rx_burst(self, burst, max)
    }
}

/// One tx queue of a port, owned by one worker.
#[derive(Debug)]
pub struct TxQueue {
    port: u16,
    queue: u16,
    pool: std::sync::Arc<Mempool>,
}

impl TxQueue {
    /// Sends frames from the front of `burst`, removing those the device took; returns how many. Never allocates
    /// or copies the pointers.
    #[inline]
    pub fn tx_burst(&mut self, burst: &mut Burst<Mbuf>) -> usize {
        let count = burst.len();
        if count == 0 {
            return 0;
        }
        // SAFETY: the burst is an array of `count` valid mbuf pointers (Mbuf is repr(transparent)) that it owns.
        // The device takes ownership of the first `sent`; those leave the burst without running Drop (the
        // untaken rest moves to the front), so each mbuf keeps exactly one owner. The queue is owned by one
        // thread.
        unsafe {
            let frames = burst.as_mut_ptr();
            let sent = usize::from(sys::shim_tx_burst(
                self.port,
                self.queue,
                frames.cast(),
                count as u16,
            ));
            let rest = count - sent;
            if sent > 0 && rest > 0 {
                std::ptr::copy(frames.add(sent), frames, rest);
            }
            burst.set_len(rest);
            sent
        }
    }
}

impl TxQueueTrait for TxQueue {
    type Frame = Mbuf;

    #[inline]
    fn tx_burst(&mut self, burst: &mut Burst<Mbuf>) -> usize {
        TxQueue::tx_burst(self, burst)
    }

    #[inline]
    fn alloc(&mut self) -> Option<Mbuf> {
        Mbuf::alloc(&self.pool)
    }
}

/// The calling thread's lcore id (`u32::MAX` for a thread DPDK does not know).
pub fn lcore_id() -> u32 {
    // SAFETY: reading the per-thread lcore id has no precondition.
    unsafe { sys::shim_lcore_id() }
}

/// The time stamp counter.
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: rdtsc has no precondition.
    unsafe { sys::shim_rdtsc() }
}

/// Ticks of [`tsc`] per second, as the EAL measured them.
pub fn tsc_hz() -> u64 {
    // SAFETY: valid after EAL init; before it DPDK returns 0, which callers treat as unknown.
    unsafe { sys::shim_tsc_hz() }
}

/// Runs `work` pinned to CPU `cpu`, as an EAL worker lcore when the EAL has an idle one on exactly that CPU (the
/// `--lcores` sluice passes gives each worker one), else on a new thread registered with DPDK. Either way it has an
/// lcore id, so the mempool caches work. Only the first keeps the multi-process channel open: registering a thread
/// turns it off for the life of the process (`rte_thread_register` calls `rte_mp_disable`), after which secondary
/// processes (dpdk-dumpcap, dpdk-proc-info) are refused. The handle's `join` waits for `work`'s result either way.
pub fn spawn_worker<T: Send + 'static>(
    cpu: usize,
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T, DpdkError>>, DpdkError> {
    if let Some(lcore) = claim_lcore_on(cpu) {
        return launch_on_lcore(lcore, name, work);
    }
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                return Err(DpdkError::Worker(format!("could not pin to CPU {cpu}")));
            }
            // SAFETY: registering the calling thread has no precondition beyond a running EAL; failure is
            // reported through the return value.
            let registered = unsafe { sys::rte_thread_register() };
            if registered != 0 {
                return Err(DpdkError::Worker(format!(
                    "could not register with DPDK: {}",
                    last_error().1
                )));
            }
            let result = work();
            // SAFETY: the thread registered above and uses no DPDK per-lcore state after this.
            unsafe { sys::rte_thread_unregister() };
            Ok(result)
        })
        .map_err(|error| DpdkError::Worker(error.to_string()))
}

/// EAL worker lcores given a job by [`spawn_worker`] and not yet done with it.
static CLAIMED_LCORES: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// An idle EAL worker lcore pinned to `cpu` alone, claimed for one job.
fn claim_lcore_on(cpu: usize) -> Option<u32> {
    if !EAL_STARTED.load(Ordering::SeqCst) {
        return None;
    }
    let mut claimed = CLAIMED_LCORES.lock().unwrap_or_else(|e| e.into_inner());
    let mut lcore = u32::MAX;
    loop {
        // SAFETY: reads the EAL's lcore table, set up by rte_eal_init (EAL_STARTED).
        lcore = unsafe { sys::rte_get_next_lcore(lcore, 1, 0) };
        if lcore >= sys::RTE_MAX_LCORE {
            return None;
        }
        // SAFETY: lcore is an enabled lcore id below RTE_MAX_LCORE; both calls only read the lcore table.
        let (only_cpu, state) = unsafe {
            (
                sys::shim_lcore_only_on_cpu(lcore, cpu as u32) == 1,
                sys::rte_eal_get_lcore_state(lcore),
            )
        };
        if only_cpu && state == sys::rte_lcore_state_t_WAIT && !claimed.contains(&lcore) {
            claimed.push(lcore);
            return Some(lcore);
        }
    }
}

type LcoreJob = Box<dyn FnOnce() + Send>;

/// What an EAL worker lcore runs: the boxed job behind `arg`, after which the lcore is free again.
extern "C" fn run_lcore_job(arg: *mut std::ffi::c_void) -> c_int {
    // SAFETY: arg is the Box<LcoreJob> leaked by launch_on_lcore for this one call.
    let job = unsafe { Box::from_raw(arg.cast::<LcoreJob>()) };
    // A panic must not unwind into C; the joining side sees the job's result missing and reports it.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    // SAFETY: rte_lcore_id only reads the calling thread's lcore id.
    let lcore = unsafe { sys::shim_lcore_id() };
    CLAIMED_LCORES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&claimed| claimed != lcore);
    0
}

fn launch_on_lcore<T: Send + 'static>(
    lcore: u32,
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T, DpdkError>>, DpdkError> {
    let release = || {
        CLAIMED_LCORES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&claimed| claimed != lcore)
    };
    let (done, result) = std::sync::mpsc::sync_channel::<T>(1);
    let thread_name = CString::new(name.chars().take(15).collect::<String>()).unwrap_or_default();
    let job: LcoreJob = Box::new(move || {
        // SAFETY: names the calling thread; the name is NUL-terminated and at most 15 bytes plus the NUL.
        unsafe { libc::pthread_setname_np(libc::pthread_self(), thread_name.as_ptr()) };
        let _ = done.send(work());
    });
    let arg = Box::into_raw(Box::new(job));
    // SAFETY: lcore is an idle EAL worker lcore claimed for this job; run_lcore_job takes ownership of arg.
    let launched = unsafe { sys::rte_eal_remote_launch(Some(run_lcore_job), arg.cast(), lcore) };
    if launched != 0 {
        // SAFETY: the launch failed, so run_lcore_job never got arg: it is still ours to free.
        drop(unsafe { Box::from_raw(arg) });
        release();
        return Err(DpdkError::Worker(format!(
            "could not launch {name} on lcore {lcore} ({launched})"
        )));
    }
    let name = name.to_owned();
    std::thread::Builder::new()
        .name(format!("{name}-join"))
        .spawn(move || match result.recv() {
            Ok(value) => Ok(value),
            Err(_) => panic!("{name} on lcore {lcore} panicked"),
        })
        .map_err(|error| DpdkError::Worker(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secondaries_attach_only_to_shared_hugepage_files() {
        let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        for blocking in [
            "--no-huge",
            "--in-memory",
            "--no-shconf",
            "--huge-unlink",
            "--huge-unlink=always",
        ] {
            let reason = secondary_attach_blocked_by(&args(&["-m", "64", blocking])).unwrap();
            assert!(reason.starts_with(blocking), "{reason}");
        }
        assert_eq!(
            secondary_attach_blocked_by(&args(&[
                "-m",
                "64",
                "--file-prefix",
                "lb",
                "--huge-unlink=never"
            ])),
            None
        );
        assert_eq!(
            secondary_attach_blocked_by(&args(&["--huge-unlink=existing"])),
            None
        );
    }

    /// The fields read inline must sit where the C compiler puts them in this DPDK's `struct rte_mbuf`.
    #[test]
    fn mbuf_layout_matches_the_c_compiler() {
        let mut c = [0u32; 8];
        // SAFETY: the shim writes exactly eight values into the array.
        unsafe { sys::shim_mbuf_layout(c.as_mut_ptr()) };
        let rust = [
            std::mem::offset_of!(sys::rte_mbuf, buf_addr),
            std::mem::offset_of!(sys::rte_mbuf, data_off),
            std::mem::offset_of!(sys::rte_mbuf, nb_segs),
            std::mem::offset_of!(sys::rte_mbuf, port),
            std::mem::offset_of!(sys::rte_mbuf, ol_flags),
            std::mem::offset_of!(sys::rte_mbuf, data_len),
            std::mem::offset_of!(sys::rte_mbuf, __bindgen_anon_2),
            std::mem::size_of::<sys::rte_mbuf>(),
        ];
        assert_eq!(rust.map(|offset| offset as u32), c);
    }

    #[test]
    fn vdev_names_are_read_from_both_argument_forms() {
        let args: Vec<String> = [
            "--no-huge",
            "--vdev=net_ring0",
            "--vdev",
            "net_pcap1,rx_pcap=a.pcap",
            "-m",
            "64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(requested_vdevs(&args), vec!["net_ring0", "net_pcap1"]);
    }
}
