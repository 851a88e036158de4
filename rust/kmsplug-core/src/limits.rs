//! The limits kube-apiserver enforces on what a KMS plugin returns, and our own.
//!
//! Values come from the apiserver's validation code (shared/docs/kms-protocol.md §2.1,
//! §2.4): it rejects `len > limit`, so each constant is the largest length accepted.

/// KMS v2: largest `EncryptResponse.ciphertext` (bytes) the apiserver accepts.
pub const V2_MAX_CIPHERTEXT: usize = 1024;
/// KMS v2: largest `key_id` (bytes) in Status and Encrypt responses.
pub const MAX_KEY_ID: usize = 1024;
/// KMS v1: largest ciphertext (its length is stored in a u16 in the apiserver's
/// envelope prefix).
pub const V1_MAX_CIPHERTEXT: usize = 65535;
/// KMS v2: largest sum of `len(key) + len(value)` over all annotations.
pub const MAX_ANNOTATIONS_BYTES: usize = 32 * 1024;

/// Longest DNS-1123 subdomain (and so FQDN) the apiserver accepts.
const MAX_FQDN: usize = 253;
/// Longest DNS-1123 label.
const MAX_LABEL: usize = 63;

/// Whether `name` passes Kubernetes' `IsFullyQualifiedDomainName`, the check on KMS v2
/// annotation keys: lowercase RFC 1123 labels (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`) joined by
/// `.`, at least two labels, each at most 63 bytes, at most 253 bytes in all. One
/// trailing `.` is allowed and ignored.
pub fn is_fqdn(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_FQDN {
        return false;
    }
    let mut labels = 0_usize;
    for label in name.split('.') {
        if !is_dns1123_label(label) {
            return false;
        }
        labels += 1;
    }
    labels >= 2
}

fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= MAX_LABEL
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_limits() {
        assert_eq!(V2_MAX_CIPHERTEXT, 1024);
        assert_eq!(MAX_KEY_ID, 1024);
        assert_eq!(V1_MAX_CIPHERTEXT, usize::from(u16::MAX));
        assert_eq!(MAX_ANNOTATIONS_BYTES, 32768);
    }

    #[test]
    fn fqdn_table() {
        let label63 = "a".repeat(63);
        let label64 = "a".repeat(64);
        // 4 labels of 63 plus 3 dots = 255 > 253; 3 labels of 63 + "a1" fits exactly 253.
        let long_ok = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
        let long_bad = format!("{label63}.{label63}.{label63}.{}", "b".repeat(62));
        assert_eq!(long_ok.len(), 253);
        assert_eq!(long_bad.len(), 254);
        let cases: &[(&str, bool)] = &[
            ("a.b", true),
            ("kms.example.io", true),
            ("local-kek.kms.kubernetes.io", true),
            ("version.encryption.remote.io", true),
            ("encrypted-kek.reference.encryption.k8s.io", true),
            ("a.b.", true),
            ("0.9", true),
            ("a-b.c-d", true),
            ("x--y.z", true),
            ("", false),
            (".", false),
            ("a", false),
            ("a.", false),
            ("localhost", false),
            ("a..b", false),
            (".a.b", false),
            ("a.b..", false),
            ("A.b", false),
            ("kms.Example.io", false),
            ("-a.b", false),
            ("a-.b", false),
            ("a.b-", false),
            ("a_b.c", false),
            ("*.example.io", false),
            ("kms.example.io/remote-kms-auditid", false),
            ("kms.kubernetes.io/local-kek", false),
            ("user@example.io", false),
            ("example.io:443", false),
            ("caf\u{e9}.example", false),
            ("a b.c", false),
        ];
        for &(name, want) in cases {
            assert_eq!(is_fqdn(name), want, "{name:?}");
        }
        assert!(is_fqdn(&format!("{label63}.io")));
        assert!(!is_fqdn(&format!("{label64}.io")));
        assert!(is_fqdn(&long_ok));
        assert!(is_fqdn(&format!("{long_ok}.")));
        assert!(!is_fqdn(&long_bad));
    }
}
