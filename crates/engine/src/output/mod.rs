//! Writing outputs: every file is written to a temporary name beside its destination and
//! renamed into place, so a reader never sees a half-written file and a failure leaves nothing
//! that looks complete.
//!
//! In: bytes or an RGB image and a destination path. Out: the file at that path, or an error
//! and no file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::RgbImage;

pub mod dicom;
pub mod geojson;
pub mod overlay;
pub mod qc;

use crate::error::{Error, Result};

/// Writes a file atomically: `write` fills a temporary file in the destination's folder, which
/// is synced and renamed to `path`. On any error the temporary file is removed.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| Error::Io {
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(
        ".tmp-tessera-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::from_io(&tmp, e))?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::from_io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::from_io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::from_io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path`, atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| {
        w.write_all(bytes).map_err(|e| Error::from_io(path, e))
    })
}

/// Writes `value` as pretty-printed JSON, atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Encode {
        path: path.into(),
        message: e.to_string(),
    })?;
    write_bytes(path, text.as_bytes())
}

/// Writes an RGB image as a PNG, atomically.
pub fn write_png(path: &Path, image: &RgbImage) -> Result<()> {
    write_png_raw(
        path,
        image.as_raw(),
        image.width(),
        image.height(),
        image::ExtendedColorType::Rgb8,
    )
}

/// Writes a greyscale image as a PNG, atomically.
pub fn write_gray_png(path: &Path, image: &image::GrayImage) -> Result<()> {
    write_png_raw(
        path,
        image.as_raw(),
        image.width(),
        image.height(),
        image::ExtendedColorType::L8,
    )
}

/// A greyscale image encoded as PNG bytes (to hold a large image compactly until written).
pub fn encode_gray_png(image: &image::GrayImage) -> Result<Vec<u8>> {
    encode_png(
        image.as_raw(),
        image.width(),
        image.height(),
        image::ExtendedColorType::L8,
    )
}

/// An RGB image encoded as PNG bytes.
pub fn encode_rgb_png(image: &RgbImage) -> Result<Vec<u8>> {
    encode_png(
        image.as_raw(),
        image.width(),
        image.height(),
        image::ExtendedColorType::Rgb8,
    )
}

/// An RGBA image encoded as PNG bytes.
pub fn encode_rgba_png(image: &image::RgbaImage) -> Result<Vec<u8>> {
    encode_png(
        image.as_raw(),
        image.width(),
        image.height(),
        image::ExtendedColorType::Rgba8,
    )
}

fn encode_png(
    raw: &[u8],
    width: u32,
    height: u32,
    colour: image::ExtendedColorType,
) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(raw, width, height, colour)
        .map_err(|e| Error::Encode {
            path: "(PNG in memory)".into(),
            message: e.to_string(),
        })?;
    Ok(out)
}

fn write_png_raw(
    path: &Path,
    raw: &[u8],
    width: u32,
    height: u32,
    colour: image::ExtendedColorType,
) -> Result<()> {
    write_atomic(path, |w| {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut *w)
            .write_image(raw, width, height, colour)
            .map_err(|e| Error::Encode {
                path: path.into(),
                message: e.to_string(),
            })?;
        w.flush().map_err(|e| Error::from_io(path, e))
    })
}

/// Writes the slide's label and macro images (when it has them) as `label.png` and
/// `macro.png` in `dir`, and returns the file names. Only on request: they carry patient names
/// and barcodes.
pub fn write_identifier_images(dir: &Path, slide: &crate::slide::Slide) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for name in ["label", "macro"] {
        if slide.associated_images().iter().any(|a| a.name == name) {
            let img = slide.read_associated_image(name)?;
            let file = format!("{name}.png");
            write_png(&dir.join(&file), &img)?;
            files.push(file);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.png");
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 80, y as u8 * 100, 7]));
        write_png(&out, &img).unwrap();
        let back = image::open(&out).unwrap().to_rgb8();
        assert_eq!(back, img);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.png");
        let err = write_atomic(&out, |w| {
            w.write_all(b"partial").unwrap();
            Err(Error::Encode {
                path: out.clone(),
                message: "boom".into(),
            })
        });
        assert!(matches!(err, Err(Error::Encode { .. })));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
