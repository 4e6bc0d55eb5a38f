//! Sizes as qemu-img writes and reads them.

/// Parses `1024`, `64K`, `1.5G`, `2T`… (powers of 1024; `B` or no suffix means bytes).
pub fn parse(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult): (&str, u64) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => {
                    return Err(format!(
                        "invalid size suffix in {s:?} (use K, M, G, T, P or E)"
                    ))
                }
            };
            (&s[..i], 1u64 << shift)
        }
        _ => (s, 1),
    };
    let bad = || format!("invalid size {s:?}");
    if num.is_empty() || num.starts_with('-') || num.starts_with('+') {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("size {s:?} is too large"));
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(v as u64)
}

/// `1 GiB`, `1.5 MiB`, `512 B`, `100 KiB`: three significant digits, as qemu-img shows sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    let text = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_qemu_img() {
        assert_eq!(parse("1024").unwrap(), 1024);
        assert_eq!(parse("64K").unwrap(), 64 << 10);
        assert_eq!(parse("64k").unwrap(), 64 << 10);
        assert_eq!(parse("1G").unwrap(), 1 << 30);
        assert_eq!(parse("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse("512B").unwrap(), 512);
        assert!(parse("").is_err());
        assert!(parse("-1G").is_err());
        assert!(parse("12Q").is_err());
        assert!(parse("99999999999E").is_err());
    }

    #[test]
    fn shows_like_qemu_img() {
        assert_eq!(human(1 << 30), "1 GiB");
        assert_eq!(human(3 << 19), "1.5 MiB");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(100 << 10), "100 KiB");
        assert_eq!(human(0), "0 B");
    }
}
