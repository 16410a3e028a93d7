//! Human-readable byte sizes: `512`, `4K`, `64M`, `1.5G` (binary units) and back.

const UNITS: [(char, u32); 5] = [('K', 10), ('M', 20), ('G', 30), ('T', 40), ('P', 50)];

/// Parses a size such as `512`, `4K`, `4KiB`, `64M`, `1.5G`; units are powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let lower = trimmed
        .trim_end_matches(['B', 'b'])
        .trim_end_matches(['i', 'I']);
    let (number, shift) = match lower.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let upper = c.to_ascii_uppercase();
            let shift = UNITS
                .iter()
                .find(|(unit, _)| *unit == upper)
                .map(|(_, shift)| *shift)
                .ok_or_else(|| format!("unknown unit in size {text:?} (use K, M, G, T, P)"))?;
            (&lower[..lower.len() - 1], shift)
        }
        _ => (lower, 0),
    };
    let number = number.trim();
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(1 << shift)
            .ok_or_else(|| format!("size {text:?} is too large"));
    }
    let fractional: f64 = number
        .parse()
        .map_err(|_| format!("cannot read size {text:?} (examples: 512, 4K, 64M, 1.5G)"))?;
    let bytes = fractional * (1u64 << shift) as f64;
    if !(0.0..u64::MAX as f64).contains(&bytes) {
        return Err(format!("size {text:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Formats bytes with the largest binary unit that keeps the number at least 1.
pub fn format_size(bytes: u64) -> String {
    let Some((unit, shift)) = UNITS.iter().rev().find(|(_, shift)| bytes >> shift > 0) else {
        return format!("{bytes} B");
    };
    let value = bytes as f64 / (1u64 << shift) as f64;
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {unit}iB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("abc").is_err());
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }
}
