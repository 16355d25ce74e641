//! BMP: 16-bit pixels expanded to 8 bits as PIL expands them. Every other BMP the `image`
//! crate decodes to PIL's pixels already (`tests/fixtures/decode/`).

use image::RgbImage;

/// PIL's 8-bit values for a 16-bit BMP the `image` crate decoded. PIL reads 5-5-5 pixels
/// (plain 16-bit, or bitfields `0x7c00 0x3e0 0x1f`) and 5-6-5 ones (`0xf800 0x7e0 0x1f`)
/// and widens a sample `x` of `max` to `x * 255 / max`, truncated; the `image` crate
/// rounds, one level above PIL in 40% of the values. Each of its values stands for one
/// `x` (`round(v * max / 255)`), so the values are mapped back and widened again.
pub(super) fn sixteen_bit_like_pil(bytes: &[u8], rgb: &mut RgbImage) {
    let Some(green_bits) = sixteen_bit_green(bytes) else {
        return;
    };
    let table = |bits: u32| -> [u8; 256] {
        let max = (1 << bits) - 1;
        std::array::from_fn(|v| {
            let x = (2 * v as u32 * max + 255) / 510;
            (x * 255 / max) as u8
        })
    };
    let (five, green) = (table(5), table(green_bits));
    for p in rgb.pixels_mut() {
        let [r, g, b] = p.0;
        p.0 = [
            five[usize::from(r)],
            green[usize::from(g)],
            five[usize::from(b)],
        ];
    }
}

/// The bits of green in a 16-bit BMP's pixels, for the two layouts PIL reads (5 for
/// 5-5-5, 6 for 5-6-5); `None` for any other BMP.
fn sixteen_bit_green(bytes: &[u8]) -> Option<u32> {
    let u16_at = |i: usize| Some(u16::from_le_bytes(bytes.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
    // BITMAPINFOHEADER or later (the 12-byte OS/2 header has no 16-bit pixels).
    if !bytes.starts_with(b"BM") || u32_at(14)? < 40 || u16_at(28)? != 16 {
        return None;
    }
    const BI_RGB: u32 = 0;
    const BI_BITFIELDS: u32 = 3;
    match (u32_at(30)?, u32_at(54), u32_at(58), u32_at(62)) {
        (BI_RGB, ..) => Some(5),
        (BI_BITFIELDS, Some(0x7c00), Some(0x3e0), Some(0x1f)) => Some(5),
        (BI_BITFIELDS, Some(0xf800), Some(0x7e0), Some(0x1f)) => Some(6),
        _ => None,
    }
}
