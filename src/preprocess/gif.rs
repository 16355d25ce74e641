//! GIFs: the first frame, composed as PIL composes it.

use std::io::Cursor;
use std::num::NonZeroU64;

use image::RgbImage;

use super::decode::{check_size, DecodeError};

/// The first frame of a GIF, pixel for pixel what PIL's `open(f).convert("RGB")` gives:
/// - the canvas is the logical screen, grown to hold a frame that reaches past it;
/// - around the frame it has the colour of the frame's transparent index, else of index 0
///   (PIL ignores the header's background index for the first frame);
/// - colours come from the frame's own palette, else the global one, and an index past
///   the palette is black;
/// - with no palette, or with the grey ramp 0, 1, 2, ... as one, an index is its grey level.
///
/// The `image` crate's decoder leaves the area around a smaller frame black, and refuses
/// a GIF without a palette (as does the gif crate, hence [`with_grey_ramp`]).
pub(super) fn first_frame(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    // Extensions PIL does not know it skips; so does this.
    options.allow_unknown_blocks(true);
    // The frame's index buffer is the only large allocation; `check_size` bounds it first.
    let limit = max_pixels.saturating_mul(2).max(1 << 26);
    options.set_memory_limit(gif::MemoryLimit::Bytes(
        NonZeroU64::new(limit).expect("at least 1 << 26"),
    ));
    let ramped = with_grey_ramp(bytes);
    let bytes = ramped.as_deref().unwrap_or(bytes);
    let mut decoder = options.read_info(Cursor::new(bytes))?;
    let (screen_width, screen_height) = (u32::from(decoder.width()), u32::from(decoder.height()));
    let global = decoder.global_palette().map(<[u8]>::to_vec);
    let frame = decoder.next_frame_info()?.ok_or(DecodeError::NoGifFrame)?;
    let (left, top) = (u32::from(frame.left), u32::from(frame.top));
    let (frame_width, frame_height) = (u32::from(frame.width), u32::from(frame.height));
    let fill = frame.transparent.unwrap_or(0);
    let palette = frame
        .palette
        .clone()
        .or(global)
        .filter(|p| !is_grey_ramp(p));
    let width = screen_width.max(left + frame_width);
    let height = screen_height.max(top + frame_height);
    check_size(width, height, max_pixels)?;
    let mut indices = vec![0u8; decoder.buffer_size()];
    decoder.read_into_buffer(&mut indices)?;

    let colour = |index: u8| match &palette {
        None => [index; 3],
        Some(p) => p
            .get(3 * usize::from(index)..3 * usize::from(index) + 3)
            .map_or([0; 3], |rgb| [rgb[0], rgb[1], rgb[2]]),
    };
    let mut canvas = RgbImage::from_pixel(width, height, image::Rgb(colour(fill)));
    let rows = indices.chunks_exact(frame_width.max(1) as usize);
    for (y, row) in (top..).zip(rows) {
        for (x, &index) in (left..).zip(row) {
            canvas.put_pixel(x, y, image::Rgb(colour(index)));
        }
    }
    Ok(canvas)
}

/// A GIF without a global colour table, given the grey ramp as one: PIL reads the indices
/// of a frame that has no palette as grey levels, and the gif crate refuses such a frame.
/// A frame with its own palette still uses it. `None` when the GIF has a global table.
fn with_grey_ramp(bytes: &[u8]) -> Option<Vec<u8>> {
    let (screen, rest) = bytes.split_at_checked(13)?;
    let flags = screen[10];
    if flags & 0x80 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() + 768);
    out.extend_from_slice(&screen[..10]);
    // A global table (0x80) of 2^(7 + 1) = 256 entries (0x07); the colour resolution and
    // sort bits are kept.
    out.push(flags | 0x87);
    out.extend_from_slice(&screen[11..]);
    out.extend((0..=255u8).flat_map(|i| [i; 3]));
    out.extend_from_slice(rest);
    Some(out)
}

/// PIL's `_is_palette_needed` answered no: entry `i` is `(i, i, i)` throughout.
fn is_grey_ramp(palette: &[u8]) -> bool {
    palette
        .chunks(3)
        .enumerate()
        .all(|(i, rgb)| rgb.iter().all(|&v| usize::from(v) == i))
}
