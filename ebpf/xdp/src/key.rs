//! Map keys built word by word on an 8-byte boundary. `FlowKey` and `VipKey` are made of byte arrays (alignment
//! 1 or 2), so LLVM would build, copy and hash them byte by byte (and zero the IPv4-mapped prefix with a `memset`
//! call); in these unions the same bytes are written and read as aligned 32/64-bit words. Every word is made with
//! `from_ne_bytes` of the bytes in memory order, so the layout is the one `padis_ebpf_common` defines.

use padis_ebpf_common::{FlowKey, FlowKey4, VipKey, VipSlot};

/// The `::ffff:0:0/96` word of an IPv4-mapped address (bytes 8..12).
const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// A [`FlowKey`] (the connection-table key and flow-hash input), 8-byte aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub union Flow {
    /// The key.
    pub key: FlowKey,
    /// Its ten 32-bit words.
    pub w: [u32; 10],
}

impl Flow {
    /// An IPv4 flow: addresses as loaded from the packet (memory order), `ports` = source port then destination
    /// port as on the wire.
    #[inline(always)]
    pub fn v4(src: u32, dst: u32, ports: u32, proto: u8) -> Flow {
        Flow { w: [0, 0, MAPPED, src, 0, 0, MAPPED, dst, ports, u32::from_ne_bytes([proto, 0, 0, 0])] }
    }

    /// An IPv6 flow (addresses as four words each in memory order).
    #[inline(always)]
    pub fn v6(src: [u32; 4], dst: [u32; 4], ports: u32, proto: u8) -> Flow {
        Flow {
            w: [src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], ports, u32::from_ne_bytes([proto, 0, 0, 0])],
        }
    }

    /// The key.
    #[inline(always)]
    pub fn key(&self) -> &FlowKey {
        // SAFETY: both views are plain data of the same size; every byte is initialised by the constructors.
        unsafe { &self.key }
    }

    /// The words.
    #[inline(always)]
    pub fn words(&self) -> &[u32; 10] {
        // SAFETY: as above.
        unsafe { &self.w }
    }

    /// Zeroes the source port (VIPs hashed on the source address only).
    #[inline(always)]
    pub fn clear_sport(&mut self) {
        let p = self.words()[8].to_ne_bytes();
        // SAFETY: plain data; writes one word of the key.
        unsafe { self.w[8] = u32::from_ne_bytes([0, 0, p[2], p[3]]) };
    }

    /// The `VIPS` key of the flow's destination.
    #[inline(always)]
    pub fn vip_key(&self) -> VipKeyWords {
        self.vip_key_pad(0)
    }

    /// The flow's destination as a `VIP_BY_ID` entry's key (`pad` = 1: slot in use).
    #[inline(always)]
    pub fn vip_slot_key(&self) -> VipKeyWords {
        self.vip_key_pad(1)
    }

    #[inline(always)]
    fn vip_key_pad(&self, pad: u8) -> VipKeyWords {
        let w = self.words();
        let p = w[8].to_ne_bytes();
        let proto = w[9].to_ne_bytes()[0];
        VipKeyWords { w: [w[4], w[5], w[6], w[7], u32::from_ne_bytes([p[2], p[3], proto, pad])] }
    }

    /// Destination port, host order.
    #[inline(always)]
    pub fn dport(&self) -> u16 {
        let p = self.words()[8].to_ne_bytes();
        u16::from_be_bytes([p[2], p[3]])
    }

    /// The `FLOWS4` key of an IPv4 flow.
    #[inline(always)]
    pub fn v4_key(&self) -> Flow4 {
        let w = self.words();
        Flow4 { w: [w[3], w[7], w[8], w[9]] }
    }
}

/// A [`FlowKey4`], 8-byte aligned (`FLOWS4` works on its words).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub union Flow4 {
    /// The key.
    pub key: FlowKey4,
    /// Its four words.
    pub w: [u32; 4],
}

impl Flow4 {
    /// The words.
    #[inline(always)]
    pub fn words(&self) -> &[u32; 4] {
        // SAFETY: plain data, fully initialised.
        unsafe { &self.w }
    }
}

/// A 16-byte address, 8-byte aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub union Addr {
    /// The bytes.
    pub b: [u8; 16],
    /// The words.
    pub w: [u32; 4],
}

impl Addr {
    /// The IPv4-mapped form of an IPv4 address loaded from the packet (memory order).
    #[inline(always)]
    pub fn v4(a: u32) -> Addr {
        Addr { w: [0, 0, MAPPED, a] }
    }

    /// The bytes.
    #[inline(always)]
    pub fn bytes(&self) -> &[u8; 16] {
        // SAFETY: plain data, fully initialised.
        unsafe { &self.b }
    }
}

/// A [`VipKey`], 8-byte aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub union VipKeyWords {
    /// The key.
    pub key: VipKey,
    /// Its five words.
    pub w: [u32; 5],
}

impl VipKeyWords {
    /// The key.
    #[inline(always)]
    pub fn key(&self) -> &VipKey {
        // SAFETY: plain data, fully initialised.
        unsafe { &self.key }
    }

    /// Whether `slot` (a `VIP_BY_ID` value, in place) holds this key; compared word by word (a struct compare
    /// would be a `memcmp` call).
    #[inline(always)]
    pub fn matches(&self, slot: &VipSlot) -> bool {
        // SAFETY: `VipSlot` starts with the 20-byte key; map values are 8-byte aligned; plain data.
        let s = unsafe { &*(slot as *const VipSlot as *const [u32; 5]) };
        // SAFETY: plain data, fully initialised.
        let w = unsafe { &self.w };
        s[4] == w[4] && s[3] == w[3] && s[2] == w[2] && s[1] == w[1] && s[0] == w[0]
    }
}
