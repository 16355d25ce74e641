//! The hostile-input corpus: every kind of file that breaks naive classifiers, generated
//! here (no binary blobs from the internet). Each entry says whether a correct classifier
//! should classify it (a valid image, however odd) or report an error.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Classified,
    Error,
}

pub struct Entry {
    pub name: String,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn gradient(w: u32, h: u32) -> image::RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128])
    })
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend(data);
    out.extend(&body);
    out.extend(crc32(&body).to_be_bytes());
}

fn ihdr(w: u32, h: u32, depth: u8, color: u8, interlace: u8) -> Vec<u8> {
    let mut d = w.to_be_bytes().to_vec();
    d.extend(h.to_be_bytes());
    d.extend([depth, color, 0, 0, interlace]);
    d
}

/// zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65535).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        out.push((i + 1 == chunks.len()) as u8);
        out.extend((c.len() as u16).to_le_bytes());
        out.extend((!(c.len() as u16)).to_le_bytes());
        out.extend(*c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + byte as u32) % 65521;
        b = (b + a) % 65521;
    }
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

/// An Adam7-interlaced RGB PNG (written by hand: common encoders don't interlace).
pub fn interlaced_png(img: &image::RgbImage) -> Vec<u8> {
    const PASSES: [(u32, u32, u32, u32); 7] = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ];
    let mut raw = Vec::new();
    for (x0, y0, dx, dy) in PASSES {
        let cols: Vec<u32> = (x0..img.width()).step_by(dx as usize).collect();
        if cols.is_empty() {
            continue;
        }
        for y in (y0..img.height()).step_by(dy as usize) {
            raw.push(0); // filter: none
            for &x in &cols {
                raw.extend(img.get_pixel(x, y).0);
            }
        }
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr(img.width(), img.height(), 8, 2, 1));
    chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    chunk(&mut png, b"IEND", &[]);
    png
}

/// A palette PNG, 4 colours.
fn palette_png(w: u32, h: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0);
        raw.extend((0..w).map(|x| ((x / 8 + y / 8) % 4) as u8));
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr(w, h, 8, 3, 0));
    chunk(
        &mut png,
        b"PLTE",
        &[255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 250],
    );
    chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    chunk(&mut png, b"IEND", &[]);
    png
}

/// A PNG whose header declares `w` x `h` and then ends: a decompression bomb's header.
pub fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr(w, h, 8, 2, 0));
    chunk(&mut png, b"IDAT", &zlib_stored(&[0; 64]));
    png
}

/// A small valid JPEG whose frame header (SOF0) is patched to claim `w` x `h`: all the
/// headers a decoder needs, a few bytes of scan data, and a huge declared size.
fn bomb_jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut j = encode(
        &DynamicImage::ImageRgb8(gradient(16, 16)),
        ImageFormat::Jpeg,
    );
    let sof = j
        .windows(2)
        .position(|m| m == [0xff, 0xc0])
        .expect("baseline JPEG");
    j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    j
}

fn cmyk_jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_CMYK);
    c.set_size(w as usize, h as usize);
    c.set_quality(90.0);
    let mut c = c.start_compress(Vec::new()).unwrap();
    let pixels: Vec<u8> = (0..w * h)
        .flat_map(|i| [(i % 200) as u8, 40, 80, 10])
        .collect();
    c.write_scanlines(&pixels).unwrap();
    c.finish().unwrap()
}

fn animated_gif() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        for i in 0..3u8 {
            let frame = image::RgbaImage::from_pixel(32, 24, Rgba([i * 80, 100, 200, 255]));
            enc.encode_frame(image::Frame::new(frame)).unwrap();
        }
    }
    out
}

fn exif_jpeg(photo: &Path, orientation: u16) -> Vec<u8> {
    // The committed EXIF fixtures carry orientation 6 and 8 already.
    let name = format!("chelsea_exif{orientation}.jpg");
    std::fs::read(photo.join(name)).unwrap()
}

/// Every corpus entry, in memory.
pub fn corpus(photos: &Path) -> Vec<Entry> {
    use Expect::*;
    let jpeg = std::fs::read(photos.join("chelsea.jpg")).unwrap();
    let png = std::fs::read(photos.join("coffee.png")).unwrap();
    let g = gradient(64, 48);
    let ppm = [
        format!("P6\n{} {}\n255\n", g.width(), g.height()).as_bytes(),
        g.as_raw(),
    ]
    .concat();
    let e = |name: &str, bytes: Vec<u8>, expect| Entry {
        name: name.to_string(),
        bytes,
        expect,
    };
    vec![
        e("zero_bytes.jpg", Vec::new(), Error),
        e("truncated.jpg", jpeg[..jpeg.len() / 2].to_vec(), Error),
        e("truncated.png", png[..png.len() / 2].to_vec(), Error),
        e(
            "text_named.jpg",
            b"Hello, I am a text file with an image extension.\n".to_vec(),
            Error,
        ),
        e("png_named.jpg", png.clone(), Classified),
        e(
            "one_pixel.png",
            encode(&DynamicImage::ImageRgb8(gradient(1, 1)), ImageFormat::Png),
            Classified,
        ),
        e(
            "strip_1x20000.png",
            encode(
                &DynamicImage::ImageRgb8(gradient(1, 20000)),
                ImageFormat::Png,
            ),
            Classified,
        ),
        e("bomb_50000x50000.png", bomb_png(50_000, 50_000), Error),
        e("bomb_50000x50000.jpg", bomb_jpeg(50_000, 50_000), Error),
        e(
            "sixteen_bit.png",
            encode(
                &DynamicImage::ImageRgb16(ImageBuffer::from_fn(40, 30, |x, y| {
                    Rgb([x as u16 * 1600, y as u16 * 2000, 40000])
                })),
                ImageFormat::Png,
            ),
            Classified,
        ),
        e(
            "grey.png",
            encode(
                &DynamicImage::ImageLuma8(ImageBuffer::from_fn(40, 30, |x, _| Luma([x as u8 * 6]))),
                ImageFormat::Png,
            ),
            Classified,
        ),
        e(
            "grey_alpha.png",
            encode(
                &DynamicImage::ImageLumaA8(ImageBuffer::from_fn(40, 30, |x, y| {
                    LumaA([x as u8 * 6, y as u8 * 8])
                })),
                ImageFormat::Png,
            ),
            Classified,
        ),
        e("palette.png", palette_png(40, 30), Classified),
        e(
            "rgba.png",
            encode(
                &DynamicImage::ImageRgba8(ImageBuffer::from_fn(40, 30, |x, y| {
                    Rgba([x as u8 * 6, 50, 90, y as u8 * 8])
                })),
                ImageFormat::Png,
            ),
            Classified,
        ),
        e("cmyk.jpg", cmyk_jpeg(48, 32), Classified),
        e("exif_orientation_6.jpg", exif_jpeg(photos, 6), Classified),
        e("exif_orientation_8.jpg", exif_jpeg(photos, 8), Classified),
        e("animated.gif", animated_gif(), Classified),
        e("interlaced.png", interlaced_png(&g), Classified),
        e(
            "progressive.jpg",
            std::fs::read(photos.join("chelsea_progressive.jpg")).unwrap(),
            Classified,
        ),
        e(
            "webp_lossless.webp",
            encode(&DynamicImage::ImageRgb8(g.clone()), ImageFormat::WebP),
            Classified,
        ),
        e(
            "plain.bmp",
            encode(&DynamicImage::ImageRgb8(g.clone()), ImageFormat::Bmp),
            Classified,
        ),
        e(
            "plain.tiff",
            encode(&DynamicImage::ImageRgb8(g), ImageFormat::Tiff),
            Classified,
        ),
        e("binary.ppm", ppm.clone(), Classified),
        e(
            "plain.pgm",
            b"P2\n2 2\n255\n0 64\n128 255\n".to_vec(),
            Classified,
        ),
        e("truncated.ppm", ppm[..ppm.len() / 2].to_vec(), Error),
        e(
            "bomb_60000x60000.ppm",
            b"P6\n60000 60000\n255\n\x01\x02\x03".to_vec(),
            Error,
        ),
        e(
            "photo.heic",
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic".to_vec(),
            Error,
        ),
    ]
}

/// Write the corpus into `dir`, plus the filesystem oddities: an unreadable file, a FIFO,
/// a directory symlink loop, and names with spaces, a newline and non-UTF-8 bytes.
/// Returns the paths of all files (the FIFO included) with their expectations.
pub fn write_corpus(dir: &Path, photos: &Path) -> Vec<(PathBuf, Expect)> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for entry in corpus(photos) {
        let path = dir.join(&entry.name);
        std::fs::write(&path, &entry.bytes).unwrap();
        out.push((path, entry.expect));
    }
    let good = std::fs::read(photos.join("coffee.png")).unwrap();
    for name in [
        &b"with space.png"[..],
        b"new\nline.png",
        b"latin1_\xe9t\xe9.png",
    ] {
        let path = dir.join(std::ffi::OsStr::from_bytes(name));
        std::fs::write(&path, &good).unwrap();
        out.push((path, Expect::Classified));
    }
    let unreadable = dir.join("unreadable.png");
    std::fs::write(&unreadable, &good).unwrap();
    std::fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    // root reads anything: then the file is simply a good image.
    let expect = if is_root() {
        Expect::Classified
    } else {
        Expect::Error
    };
    out.push((unreadable, expect));
    let fifo = dir.join("fifo.jpg");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    out.push((fifo, Expect::Error));
    std::fs::create_dir(dir.join("loop")).unwrap();
    std::os::unix::fs::symlink(dir, dir.join("loop/back_to_top")).unwrap();
    out
}

pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
