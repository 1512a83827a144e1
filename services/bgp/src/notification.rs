//! NOTIFICATION error codes and subcodes as types (RFC 4271 §4.5 and §6, RFC 4486 for Cease, RFC
//! 7313 for ROUTE-REFRESH): the code that sends one names what it means —
//! `BgpError::Cease(Cease::PeerDeconfigured)` — and one table per code holds each subcode's number
//! and name, for the wire and for the logs alike. Codes and subcodes no RFC here names still
//! travel (a peer may send them): as `Unknown` and `Other`.

/// One code's subcodes: the variants, their numbers and their names, from one list.
macro_rules! subcodes {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $value:literal, $text:literal;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant,)*
            /// A subcode no RFC routeplane knows.
            Other(u8),
        }

        impl $name {
            pub fn subcode(self) -> u8 {
                match self {
                    $(Self::$variant => $value,)*
                    Self::Other(v) => v,
                }
            }

            pub fn of(subcode: u8) -> Self {
                match subcode {
                    $($value => Self::$variant,)*
                    v => Self::Other(v),
                }
            }

            pub fn text(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(_) => "",
                }
            }
        }
    };
}

subcodes! {
    /// RFC 4271 §6.1.
    HeaderError {
        ConnectionNotSynchronized = 1, "Connection Not Synchronized";
        BadMessageLength = 2, "Bad Message Length";
        BadMessageType = 3, "Bad Message Type";
    }
}

subcodes! {
    /// RFC 4271 §6.2, RFC 5492 §5 (Unsupported Capability).
    OpenError {
        Unspecific = 0, "";
        UnsupportedVersion = 1, "Unsupported Version Number";
        BadPeerAs = 2, "Bad Peer AS";
        BadBgpIdentifier = 3, "Bad BGP Identifier";
        UnsupportedOptionalParameter = 4, "Unsupported Optional Parameter";
        UnacceptableHoldTime = 6, "Unacceptable Hold Time";
        UnsupportedCapability = 7, "Unsupported Capability";
    }
}

subcodes! {
    /// RFC 4271 §6.3.
    UpdateError {
        Unspecific = 0, "";
        MalformedAttributeList = 1, "Malformed Attribute List";
        UnrecognizedWellKnownAttribute = 2, "Unrecognized Well-known Attribute";
        MissingWellKnownAttribute = 3, "Missing Well-known Attribute";
        AttributeFlagsError = 4, "Attribute Flags Error";
        AttributeLengthError = 5, "Attribute Length Error";
        InvalidOrigin = 6, "Invalid ORIGIN Attribute";
        InvalidNextHop = 8, "Invalid NEXT_HOP Attribute";
        OptionalAttributeError = 9, "Optional Attribute Error";
        InvalidNetworkField = 10, "Invalid Network Field";
        MalformedAsPath = 11, "Malformed AS_PATH";
    }
}

subcodes! {
    /// RFC 6608.
    FsmError {
        Unspecific = 0, "";
        UnexpectedInOpenSent = 1, "unexpected message in OpenSent";
        UnexpectedInOpenConfirm = 2, "unexpected message in OpenConfirm";
        UnexpectedInEstablished = 3, "unexpected message in Established";
    }
}

subcodes! {
    /// RFC 4486 §4 (and RFC 8538's Hard Reset).
    Cease {
        Unspecific = 0, "";
        MaxPrefixes = 1, "Maximum Number of Prefixes Reached";
        AdministrativeShutdown = 2, "Administrative Shutdown";
        PeerDeconfigured = 3, "Peer De-configured";
        AdministrativeReset = 4, "Administrative Reset";
        ConnectionRejected = 5, "Connection Rejected";
        OtherConfigurationChange = 6, "Other Configuration Change";
        ConnectionCollision = 7, "Connection Collision Resolution";
        OutOfResources = 8, "Out of Resources";
        HardReset = 9, "Hard Reset";
    }
}

/// What a NOTIFICATION says went wrong: its code, with the subcode typed per code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BgpError {
    Header(HeaderError),
    Open(OpenError),
    Update(UpdateError),
    HoldTimerExpired,
    Fsm(FsmError),
    Cease(Cease),
    /// RFC 7313 §5 (subcode 1: Invalid Message Length).
    RouteRefresh(u8),
    /// A code no RFC routeplane knows.
    Unknown {
        code: u8,
        subcode: u8,
    },
}

impl BgpError {
    pub fn of(code: u8, subcode: u8) -> BgpError {
        match code {
            1 => BgpError::Header(HeaderError::of(subcode)),
            2 => BgpError::Open(OpenError::of(subcode)),
            3 => BgpError::Update(UpdateError::of(subcode)),
            4 if subcode == 0 => BgpError::HoldTimerExpired,
            5 => BgpError::Fsm(FsmError::of(subcode)),
            6 => BgpError::Cease(Cease::of(subcode)),
            7 => BgpError::RouteRefresh(subcode),
            _ => BgpError::Unknown { code, subcode },
        }
    }

    pub fn code(self) -> u8 {
        match self {
            BgpError::Header(_) => 1,
            BgpError::Open(_) => 2,
            BgpError::Update(_) => 3,
            BgpError::HoldTimerExpired => 4,
            BgpError::Fsm(_) => 5,
            BgpError::Cease(_) => 6,
            BgpError::RouteRefresh(_) => 7,
            BgpError::Unknown { code, .. } => code,
        }
    }

    pub fn subcode(self) -> u8 {
        match self {
            BgpError::Header(s) => s.subcode(),
            BgpError::Open(s) => s.subcode(),
            BgpError::Update(s) => s.subcode(),
            BgpError::HoldTimerExpired => 0,
            BgpError::Fsm(s) => s.subcode(),
            BgpError::Cease(s) => s.subcode(),
            BgpError::RouteRefresh(s) | BgpError::Unknown { subcode: s, .. } => s,
        }
    }

    /// The code's name and the subcode's, as RFC 4271 and 4486 write them.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            BgpError::Header(s) => ("Message Header Error", s.text()),
            BgpError::Open(s) => ("OPEN Message Error", s.text()),
            BgpError::Update(s) => ("UPDATE Message Error", s.text()),
            BgpError::HoldTimerExpired => ("Hold Timer Expired", ""),
            BgpError::Fsm(s) => ("Finite State Machine Error", s.text()),
            BgpError::Cease(s) => ("Cease", s.text()),
            BgpError::RouteRefresh(1) => ("ROUTE-REFRESH Message Error", "Invalid Message Length"),
            BgpError::RouteRefresh(_) => ("ROUTE-REFRESH Message Error", ""),
            BgpError::Unknown { .. } => ("unknown error code", ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (code, subcode) pair reads back as the same numbers: nothing a peer sends is lost.
    #[test]
    fn every_code_and_subcode_round_trips() {
        for code in 0..=255u8 {
            for subcode in 0..=255u8 {
                let e = BgpError::of(code, subcode);
                assert_eq!((e.code(), e.subcode()), (code, subcode), "{e:?}");
            }
        }
    }

    #[test]
    fn names_are_the_rfcs() {
        assert_eq!(
            BgpError::Cease(Cease::MaxPrefixes).names(),
            ("Cease", "Maximum Number of Prefixes Reached")
        );
        assert_eq!(
            BgpError::of(3, 11),
            BgpError::Update(UpdateError::MalformedAsPath)
        );
        assert_eq!(BgpError::of(4, 0), BgpError::HoldTimerExpired);
        assert_eq!(
            BgpError::of(4, 1),
            BgpError::Unknown {
                code: 4,
                subcode: 1
            }
        );
    }
}
