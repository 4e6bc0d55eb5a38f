//! The virtio-net header (`struct virtio_net_hdr_v1`, 12 bytes, little endian) that precedes
//! every frame on both queues and on the tap (`TUNSETVNETHDRSZ` 12), and the checks a header
//! from the guest must pass before its frame goes to the tap.
//!
//! The kernel validates headers too (`virtio_net_hdr_to_skb`), but the guest is hostile and the
//! worker is the boundary: a header that asks for something the device did not offer, or points
//! outside its frame, is dropped here, counted, and never reaches the host's network stack.
//!
//! Transmit rules (virtio 1.2, 5.1.6.2):
//!
//! | header                                                           | verdict             |
//! |------------------------------------------------------------------|---------------------|
//! | flags other than `NEEDS_CSUM` (`DATA_VALID`, `RSC_INFO` are RX)  | [`HdrFault::Flags`] |
//! | `NEEDS_CSUM` without `VIRTIO_NET_F_CSUM` negotiated              | [`HdrFault::CsumNotNegotiated`] |
//! | `gso_type` not NONE / TCPV4 / TCPV6 (UDP, UDP_L4, ECN: not offered) | [`HdrFault::GsoType`] |
//! | TCPV4 without `HOST_TSO4`, TCPV6 without `HOST_TSO6`             | [`HdrFault::GsoNotNegotiated`] |
//! | segmentation without `VIRTIO_NET_F_CSUM` negotiated              | [`HdrFault::GsoWithoutCsum`] |
//! | segmentation with `gso_size` 0                                   | [`HdrFault::GsoSizeZero`] |
//! | `hdr_len` beyond the frame                                       | [`HdrFault::HdrLen`] |
//! | `NEEDS_CSUM` and `csum_start + csum_offset + 2` beyond the frame | [`HdrFault::Csum`] |
//!
//! `num_buffers` is ignored on transmit (the driver sets it to 0).

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Size of the header on the queues and on the tap: `struct virtio_net_hdr_v1` (VERSION_1) or
/// `struct virtio_net_hdr_mrg_rxbuf`, which have the same layout.
pub const HDR_LEN: usize = 12;
const _: () =
    assert!(HDR_LEN == std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>());
const _: () = assert!(
    HDR_LEN == std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_mrg_rxbuf>()
);

/// Longest frame (without the header) the device passes either way: a 64 KiB TSO frame with its
/// Ethernet header, as the tap produces and accepts them.
pub const MAX_FRAME: usize = 65550;

/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// The header's fields, host endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8; HDR_LEN]) -> VnetHdr {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(NUM_BUFFERS_OFFSET),
        }
    }

    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
            (NUM_BUFFERS_OFFSET, self.num_buffers),
        ] {
            b[i..i + 2].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// Why a transmit header is refused; each maps to one drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HdrFault {
    #[error("Header flags {0:#x} are not for transmit")]
    Flags(u8),
    #[error("NEEDS_CSUM without VIRTIO_NET_F_CSUM")]
    CsumNotNegotiated,
    #[error("gso_type {0:#x} is not a segmentation the device offers")]
    GsoType(u8),
    #[error("gso_type {0:#x} was not negotiated")]
    GsoNotNegotiated(u8),
    #[error("Segmentation without VIRTIO_NET_F_CSUM")]
    GsoWithoutCsum,
    #[error("Segmentation with gso_size 0")]
    GsoSizeZero,
    #[error("hdr_len {hdr_len} is beyond the {frame}-byte frame")]
    HdrLen { hdr_len: u16, frame: usize },
    #[error("Checksum at {start}+{offset} is beyond the {frame}-byte frame")]
    Csum {
        start: u16,
        offset: u16,
        frame: usize,
    },
}

fn has(acked: u64, bit: u32) -> bool {
    acked & (1 << bit) != 0
}

/// Checks the header of a `frame_len`-byte frame the guest wants sent, against the features
/// it acked. See the module table.
pub fn validate_tx(h: &VnetHdr, frame_len: usize, acked: u64) -> Result<(), HdrFault> {
    let needs_csum = u32::from(h.flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    if u32::from(h.flags) & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return Err(HdrFault::Flags(h.flags));
    }
    let csum = has(acked, VIRTIO_NET_F_CSUM);
    match u32::from(h.gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => {}
        t @ (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6) => {
            let feature = if t == VIRTIO_NET_HDR_GSO_TCPV4 {
                VIRTIO_NET_F_HOST_TSO4
            } else {
                VIRTIO_NET_F_HOST_TSO6
            };
            if !has(acked, feature) {
                return Err(HdrFault::GsoNotNegotiated(h.gso_type));
            }
            if !csum {
                return Err(HdrFault::GsoWithoutCsum);
            }
            if h.gso_size == 0 {
                return Err(HdrFault::GsoSizeZero);
            }
        }
        _ => return Err(HdrFault::GsoType(h.gso_type)),
    }
    if needs_csum && !csum {
        return Err(HdrFault::CsumNotNegotiated);
    }
    if usize::from(h.hdr_len) > frame_len {
        return Err(HdrFault::HdrLen {
            hdr_len: h.hdr_len,
            frame: frame_len,
        });
    }
    // The checksum field (2 bytes) at csum_start + csum_offset must lie inside the frame.
    if needs_csum && usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 > frame_len {
        return Err(HdrFault::Csum {
            start: h.csum_start,
            offset: h.csum_offset,
            frame: frame_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_UDP,
        VIRTIO_NET_HDR_GSO_UDP_L4,
    };

    use super::*;

    const ALL: u64 =
        (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_TSO6);
    const NEEDS: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;

    fn tso(gso_type: u32) -> VnetHdr {
        VnetHdr {
            flags: NEEDS,
            gso_type: gso_type as u8,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    #[test]
    fn round_trip_is_little_endian() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 0x0506,
            csum_offset: 0x0708,
            num_buffers: 0x090a,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 4, 2, 1, 4, 3, 6, 5, 8, 7, 0x0a, 9]);
        assert_eq!(VnetHdr::parse(&b), h);
    }

    #[test]
    fn plain_and_offloaded_frames_pass() {
        assert_eq!(validate_tx(&VnetHdr::default(), 60, 0), Ok(()));
        assert_eq!(validate_tx(&VnetHdr::default(), 0, 0), Ok(()));
        let csum_only = VnetHdr {
            flags: NEEDS,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        assert_eq!(validate_tx(&csum_only, 42, ALL), Ok(()));
        assert_eq!(
            validate_tx(&tso(VIRTIO_NET_HDR_GSO_TCPV4), 9000, ALL),
            Ok(())
        );
        assert_eq!(
            validate_tx(&tso(VIRTIO_NET_HDR_GSO_TCPV6), 9000, ALL),
            Ok(())
        );
        // num_buffers means nothing on transmit.
        let nb = VnetHdr {
            num_buffers: 7,
            ..VnetHdr::default()
        };
        assert_eq!(validate_tx(&nb, 60, 0), Ok(()));
    }

    #[test]
    fn flags_must_be_for_transmit_and_negotiated() {
        let h = VnetHdr {
            flags: VIRTIO_NET_HDR_F_DATA_VALID as u8,
            ..VnetHdr::default()
        };
        assert_eq!(validate_tx(&h, 60, ALL), Err(HdrFault::Flags(2)));
        let h = VnetHdr {
            flags: 0x80 | NEEDS,
            ..VnetHdr::default()
        };
        assert_eq!(validate_tx(&h, 60, ALL), Err(HdrFault::Flags(0x81)));
        let h = VnetHdr {
            flags: NEEDS,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        assert_eq!(validate_tx(&h, 60, 0), Err(HdrFault::CsumNotNegotiated));
    }

    #[test]
    fn segmentation_needs_its_features() {
        for t in [
            VIRTIO_NET_HDR_GSO_UDP,
            VIRTIO_NET_HDR_GSO_UDP_L4,
            VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            2,
            0x7f,
        ] {
            assert_eq!(
                validate_tx(&tso(t), 9000, ALL),
                Err(HdrFault::GsoType(t as u8)),
                "gso_type {t:#x}"
            );
        }
        let v4 = tso(VIRTIO_NET_HDR_GSO_TCPV4);
        let v6 = tso(VIRTIO_NET_HDR_GSO_TCPV6);
        let no_tso4 = ALL & !(1 << VIRTIO_NET_F_HOST_TSO4);
        let no_tso6 = ALL & !(1 << VIRTIO_NET_F_HOST_TSO6);
        assert_eq!(
            validate_tx(&v4, 9000, no_tso4),
            Err(HdrFault::GsoNotNegotiated(1))
        );
        assert_eq!(validate_tx(&v6, 9000, no_tso4), Ok(()));
        assert_eq!(
            validate_tx(&v6, 9000, no_tso6),
            Err(HdrFault::GsoNotNegotiated(4))
        );
        let no_csum = ALL & !(1 << VIRTIO_NET_F_CSUM);
        assert_eq!(
            validate_tx(&v4, 9000, no_csum),
            Err(HdrFault::GsoWithoutCsum)
        );
        let zero = VnetHdr { gso_size: 0, ..v4 };
        assert_eq!(validate_tx(&zero, 9000, ALL), Err(HdrFault::GsoSizeZero));
    }

    #[test]
    fn offsets_must_lie_inside_the_frame() {
        let v4 = tso(VIRTIO_NET_HDR_GSO_TCPV4);
        // hdr_len 54 fits a 54-byte frame exactly, not a 53-byte one.
        assert_eq!(validate_tx(&v4, 54, ALL), Ok(()));
        assert_eq!(
            validate_tx(&v4, 53, ALL),
            Err(HdrFault::HdrLen {
                hdr_len: 54,
                frame: 53
            })
        );
        // The checksum field ends at 34 + 16 + 2 = 52.
        let h = VnetHdr { hdr_len: 0, ..v4 };
        assert_eq!(validate_tx(&h, 52, ALL), Ok(()));
        assert_eq!(
            validate_tx(&h, 51, ALL),
            Err(HdrFault::Csum {
                start: 34,
                offset: 16,
                frame: 51
            })
        );
        let huge = VnetHdr {
            hdr_len: 0,
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            ..v4
        };
        assert!(matches!(
            validate_tx(&huge, MAX_FRAME, ALL),
            Err(HdrFault::Csum { .. })
        ));
        // Without NEEDS_CSUM the checksum fields are not looked at.
        let h = VnetHdr {
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            ..VnetHdr::default()
        };
        assert_eq!(validate_tx(&h, 60, 0), Ok(()));
        // hdr_len is checked even without segmentation.
        let h = VnetHdr {
            hdr_len: 61,
            ..VnetHdr::default()
        };
        assert!(matches!(
            validate_tx(&h, 60, 0),
            Err(HdrFault::HdrLen { .. })
        ));
    }
}
