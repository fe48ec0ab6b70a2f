//! Who puts a VIP on the node and so decides whether sluice answers for it: `[network] vip_owner`.
//!
//! - `static`: sluice always answers ARP/ND for its VIPs and balances their traffic (no kernel interface needed).
//! - `bgp`: as `static`, and sluice also puts each VIP on the kernel interfaces while it has a backend that can
//!   take traffic, for a routing daemon to announce (the default with the kernel exception path).
//! - `vrrp`: keepalived (`keepalived --vrrp`) owns the VIPs: it puts them on sluice's kernel interface when it is
//!   MASTER and takes them off when it is not. sluice follows the interface's addresses and answers for, and
//!   balances, a VIP only while it is there.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipOwner {
    Static,
    Bgp,
    Vrrp,
}

impl VipOwner {
    /// The setting's value in a configuration file.
    pub fn parse(text: &str) -> Result<VipOwner, String> {
        match text {
            "static" => Ok(VipOwner::Static),
            "bgp" => Ok(VipOwner::Bgp),
            "vrrp" => Ok(VipOwner::Vrrp),
            other => Err(format!(
                "vip_owner: {other:?} is not allowed; use \"static\", \"bgp\" or \"vrrp\""
            )),
        }
    }

    /// The value when the file does not say: `bgp` with the kernel exception path (sluice's behaviour before the
    /// setting existed), `static` without.
    pub fn default_for(kernel_exception_path: bool) -> VipOwner {
        if kernel_exception_path {
            VipOwner::Bgp
        } else {
            VipOwner::Static
        }
    }

    /// Whether the owner needs the kernel exception path (a kernel interface to put the VIP on).
    pub fn needs_kernel_interface(self) -> bool {
        self != VipOwner::Static
    }
}

impl fmt::Display for VipOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VipOwner::Static => "static",
            VipOwner::Bgp => "bgp",
            VipOwner::Vrrp => "vrrp",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_defaults() {
        assert_eq!(VipOwner::parse("vrrp"), Ok(VipOwner::Vrrp));
        assert_eq!(VipOwner::parse("bgp"), Ok(VipOwner::Bgp));
        assert_eq!(VipOwner::parse("static"), Ok(VipOwner::Static));
        assert!(VipOwner::parse("VRRP").unwrap_err().contains("\"static\""));
        assert_eq!(VipOwner::default_for(true), VipOwner::Bgp);
        assert_eq!(VipOwner::default_for(false), VipOwner::Static);
        assert!(!VipOwner::Static.needs_kernel_interface());
        assert!(VipOwner::Vrrp.needs_kernel_interface());
    }
}
