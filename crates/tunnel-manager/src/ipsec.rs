//! IPsec ESP for a tunnel's underlay, keyed without a key exchange: both gateways derive the
//! same security associations from what they share, the fleet's pre-shared key, the two
//! external addresses and the epoch, so neither side waits for the other and nothing secret
//! crosses the API.
//!
//! - **Algorithm.** ESP in transport mode with AES-GCM (`rfc4106(gcm(aes))`, a 128-bit key
//!   and a 32-bit salt, a 128-bit tag) and 64-bit extended sequence numbers: AES-GCM is in
//!   every distribution kernel Kube-OVN runs on (the `esp4`, `xfrm_user` and `gcm` modules;
//!   the gateway image only needs iproute2's `ip xfrm`), it encrypts and authenticates in one
//!   pass, and ESN keeps a busy SA from running out of sequence numbers before its epoch ends.
//! - **Derivation.** The key: HKDF-SHA256, the pre-shared key as input keying material, a
//!   fixed salt, and an info string naming the direction (source and destination address),
//!   the carrier (VXLAN's UDP port, or GRE) and the epoch; 20 bytes come out, the AEAD key and
//!   its salt. The SPI: SHA-256 of the same facts without the key, so it differs per
//!   direction, carrier and epoch but not with the key. Both ends with different pre-shared
//!   keys therefore hold SAs under the same SPIs with different keys, and the kernel counts
//!   each packet it cannot authenticate on the SA that rejected it (`ip -s xfrm state`:
//!   `failed`): a mismatch names itself, per tunnel. (An SPI reveals nothing: it travels in
//!   clear in every packet.)
//! - **Epochs.** `epoch = ⌊unix time / rekey interval⌋`. Outbound uses the current epoch's
//!   SA; inbound accepts the previous, current and next epochs'. Each side moves on at its own
//!   boundary: the far end accepts the new outbound SA from the start of the epoch before, and
//!   the old one until the epoch after, so a rekey drops nothing while the clocks of the two
//!   gateways' nodes agree within one interval.

use std::{
    fmt,
    net::Ipv4Addr,
    time::{Duration, SystemTime},
};

use ring::hkdf;

/// The shortest pre-shared key accepted: 256 bits (Submariner's generated PSK is 48 bytes).
pub const MIN_PSK_BYTES: usize = 32;

/// HKDF's salt: fixed, so that both ends need nothing but the key and the facts they share.
const SALT: &[u8] = b"kubeovn-multivpc ipsec v2";

/// Bytes ESP adds to each underlay packet in transport mode with AES-GCM, at most: SPI and
/// sequence number (8), the IV (8), padding to 4 bytes (up to 3), pad length and next header
/// (2) and the tag (16), rounded up.
pub const ESP_OVERHEAD: u32 = 40;

/// The AEAD every SA uses, as `ip xfrm` names it, and its tag length in bits.
pub const AEAD: &str = "rfc4106(gcm(aes))";
const ICV_BITS: u32 = 128;
/// 16 bytes of AES-128 key and the 4-byte salt rfc4106 takes after it.
const KEY_BYTES: usize = 20;
const REPLAY_WINDOW: u32 = 128;

/// The fleet's pre-shared key. Its bytes are never formatted.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Vec<u8>);

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psk({} bytes)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PskError {
    #[error("the pre-shared key has {0} bytes, fewer than {MIN_PSK_BYTES}")]
    TooShort(usize),
}

impl Psk {
    pub fn new(bytes: Vec<u8>) -> Result<Self, PskError> {
        if bytes.len() < MIN_PSK_BYTES {
            return Err(PskError::TooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }
}

/// What the policies select: the tunnel's underlay packets between the two addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// UDP to this port (VXLAN sends to the same destination port both ways).
    Vxlan {
        port: u16,
    },
    Gre,
}

impl Carrier {
    /// The `ip xfrm policy` selector after the addresses.
    pub fn selector(self) -> String {
        match self {
            Self::Vxlan { port } => format!("proto udp dport {port}"),
            Self::Gre => "proto gre".to_owned(),
        }
    }

    fn label(self) -> String {
        match self {
            Self::Vxlan { port } => format!("udp/{port}"),
            Self::Gre => "gre".to_owned(),
        }
    }
}

/// The epoch at `now` and when the next one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    pub number: u64,
    pub next_at: SystemTime,
}

/// `⌊now / interval⌋` since the Unix epoch (an interval under a second counts as one).
pub fn epoch_at(now: SystemTime, interval: Duration) -> Epoch {
    let secs = interval.as_secs().max(1);
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let number = since / secs;
    Epoch {
        number,
        next_at: SystemTime::UNIX_EPOCH + Duration::from_secs((number + 1) * secs),
    }
}

/// One direction's security association. Its key is never formatted.
#[derive(Clone, PartialEq, Eq)]
pub struct Sa {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub spi: u32,
    /// Ties the outbound policy to this epoch's SA (several SAs share the addresses).
    pub reqid: u32,
    pub epoch: u64,
    key: [u8; KEY_BYTES],
}

impl fmt::Debug for Sa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sa({} -> {} spi {:#010x} reqid {} epoch {})",
            self.src, self.dst, self.spi, self.reqid, self.epoch
        )
    }
}

impl Sa {
    /// The `ip -batch` line adding this SA. It holds the key: it goes to the script's stdin,
    /// never into a log, an argv or an error.
    pub fn batch_line(&self) -> String {
        let key: String = self.key.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "xfrm state add src {} dst {} proto esp spi {:#010x} reqid {} mode transport replay-window {REPLAY_WINDOW} flag esn aead {AEAD} 0x{key} {ICV_BITS}",
            self.src, self.dst, self.spi, self.reqid
        )
    }
}

/// The carrier's part of a reqid (its top 12 bits): the SAs of two tunnels of different kinds
/// between the same two addresses are told apart by it.
pub fn carrier_tag(carrier: Carrier) -> u32 {
    match carrier {
        Carrier::Gre => 1,
        Carrier::Vxlan { port } => 2 + u32::from(port) % 4093,
    }
}

/// The reqid of a carrier's SAs in `epoch`: the carrier's tag, then the epoch (20 bits, never
/// 0, as 0 in a policy template means "any").
pub fn reqid(carrier: Carrier, epoch: u64) -> u32 {
    (carrier_tag(carrier) << 20) | ((epoch % 0xf_ffff) as u32 + 1)
}

/// The facts both ends share about the SA from `src` to `dst` for `carrier` in `epoch`.
fn info(src: Ipv4Addr, dst: Ipv4Addr, carrier: Carrier, epoch: u64) -> String {
    format!("{src}\0{dst}\0{}\0{epoch}", carrier.label())
}

/// The SPI of the SA from `src` to `dst` for `carrier` in `epoch`: public, as on the wire.
pub fn spi(src: Ipv4Addr, dst: Ipv4Addr, carrier: Carrier, epoch: u64) -> u32 {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("esp-spi\0{}", info(src, dst, carrier, epoch)).as_bytes(),
    );
    let raw = u32::from_be_bytes(digest.as_ref()[..4].try_into().expect("4 bytes"));
    // SPIs 1–255 are reserved (RFC 4303); 0x1000_0000 and up leaves 2^28 values.
    0x1000_0000 | (raw & 0x0fff_ffff)
}

/// The SA from `src` to `dst` for `carrier` in `epoch`.
pub fn derive(psk: &Psk, src: Ipv4Addr, dst: Ipv4Addr, carrier: Carrier, epoch: u64) -> Sa {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let info = format!("esp-key\0{}", info(src, dst, carrier, epoch));
    let mut key = [0u8; KEY_BYTES];
    hkdf::Salt::new(hkdf::HKDF_SHA256, SALT)
        .extract(&psk.0)
        .expand(&[info.as_bytes()], Len(key.len()))
        .and_then(|okm| okm.fill(&mut key))
        .expect("20 bytes are well within HKDF-SHA256's output limit");
    Sa {
        src,
        dst,
        spi: spi(src, dst, carrier, epoch),
        reqid: reqid(carrier, epoch),
        epoch,
        key,
    }
}

/// What one gateway installs for a tunnel at `epoch`: the outbound SA of this epoch, and the
/// inbound SAs of the previous, this and the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keying {
    pub outbound: Sa,
    pub inbound: Vec<Sa>,
}

pub fn keying(
    psk: &Psk,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    carrier: Carrier,
    epoch: u64,
) -> Keying {
    Keying {
        outbound: derive(psk, local, remote, carrier, epoch),
        inbound: [epoch.saturating_sub(1), epoch, epoch + 1]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|e| derive(psk, remote, local, carrier, e))
            .collect(),
    }
}

impl Keying {
    /// Every SA, outbound first.
    pub fn all(&self) -> impl Iterator<Item = &Sa> {
        std::iter::once(&self.outbound).chain(&self.inbound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk(fill: u8) -> Psk {
        Psk::new(vec![fill; 48]).unwrap()
    }

    const A: Ipv4Addr = Ipv4Addr::new(172, 50, 1, 11);
    const B: Ipv4Addr = Ipv4Addr::new(172, 50, 2, 11);
    const VXLAN: Carrier = Carrier::Vxlan { port: 4789 };

    #[test]
    fn both_ends_derive_the_same_sas_for_each_direction() {
        let at_a = keying(&psk(7), A, B, VXLAN, 100);
        let at_b = keying(&psk(7), B, A, VXLAN, 100);
        // A's outbound is among B's inbound, and the other way round.
        assert!(at_b.inbound.contains(&at_a.outbound));
        assert!(at_a.inbound.contains(&at_b.outbound));
        assert_ne!(at_a.outbound.spi, at_b.outbound.spi, "directions differ");
        assert_ne!(at_a.outbound.key, at_b.outbound.key);
    }

    #[test]
    fn spis_and_keys_differ_by_epoch_carrier_and_pair_keys_by_psk() {
        let base = derive(&psk(7), A, B, VXLAN, 100);
        for other in [
            derive(&psk(7), A, B, VXLAN, 101),
            derive(&psk(7), A, B, Carrier::Gre, 100),
            derive(&psk(7), A, B, Carrier::Vxlan { port: 4790 }, 100),
            derive(&psk(7), A, Ipv4Addr::new(172, 50, 2, 12), VXLAN, 100),
        ] {
            assert_ne!(base.spi, other.spi, "{other:?}");
            assert_ne!(base.key, other.key, "{other:?}");
        }
        // Another pre-shared key: the same SPI (so the far end's kernel counts the mismatch
        // on that SA), another key.
        let other_psk = derive(&psk(8), A, B, VXLAN, 100);
        assert_eq!(base.spi, other_psk.spi);
        assert_ne!(base.key, other_psk.key);
        assert_eq!(base, derive(&psk(7), A, B, VXLAN, 100), "deterministic");
        assert!(base.spi >= 0x1000_0000);
    }

    #[test]
    fn a_rekey_overlaps_each_side_accepts_the_neighbouring_epochs() {
        // B is one epoch ahead of A (clocks apart across a boundary): each still accepts
        // what the other sends.
        let at_a = keying(&psk(7), A, B, VXLAN, 100);
        let at_b = keying(&psk(7), B, A, VXLAN, 101);
        assert!(at_b.inbound.contains(&at_a.outbound));
        assert!(at_a.inbound.contains(&at_b.outbound));
        assert_eq!(
            at_a.inbound.iter().map(|s| s.epoch).collect::<Vec<_>>(),
            [99, 100, 101]
        );
        assert_eq!(keying(&psk(7), A, B, VXLAN, 0).inbound.len(), 2);
    }

    #[test]
    fn epochs_follow_the_clock() {
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let e = epoch_at(at(3_599), Duration::from_secs(3_600));
        assert_eq!((e.number, e.next_at), (0, at(3_600)));
        assert_eq!(epoch_at(at(3_600), Duration::from_secs(3_600)).number, 1);
        assert_eq!(epoch_at(at(5), Duration::ZERO).number, 5);
        for carrier in [Carrier::Gre, VXLAN, Carrier::Vxlan { port: 65535 }] {
            for e in [0, 1, 0xf_fffe, 0xf_ffff, u64::MAX] {
                let r = reqid(carrier, e);
                assert_ne!(r & 0xf_ffff, 0, "{e}");
                assert_eq!(r >> 20, carrier_tag(carrier));
            }
        }
        assert_ne!(reqid(Carrier::Gre, 5), reqid(VXLAN, 5));
    }

    #[test]
    fn no_key_byte_is_ever_formatted_except_in_the_batch_line() {
        let k = psk(0xab);
        assert!(!format!("{k:?}").contains("ab"), "{k:?}");
        let sa = derive(&k, A, B, VXLAN, 1);
        let hex: String = sa.key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!format!("{sa:?}").contains(&hex));
        assert!(!format!("{:?}", keying(&k, A, B, VXLAN, 1)).contains(&hex));
        let line = sa.batch_line();
        assert!(line.contains(&hex));
        assert!(line.starts_with(&format!(
            "xfrm state add src {A} dst {B} proto esp spi {:#010x} reqid {} mode transport",
            sa.spi,
            reqid(VXLAN, 1)
        )));
        assert!(line.ends_with(" 128"));
        assert_eq!(Psk::new(vec![0; 31]), Err(PskError::TooShort(31)));
    }
}
