//! Every unsafe call into OpenSlide's C library, loaded at run time with `libloading`.
//!
//! In: a library path and slide paths. Out: [`Api`] (the library's function table) and
//! [`RawSlide`] (one `openslide_t*`), whose methods are safe: they own the buffers they hand to
//! C, size them from the arguments, and copy C strings out before returning. Locations are
//! level-0 pixels and sizes are level pixels, exactly as in `openslide_read_region`.
//!
//! Signatures follow `openslide.h` (OpenSlide 3.4 and 4.0); the 4.0-only ICC functions are
//! optional symbols, so the same code drives Debian's 3.4.1 and the `openslide-bin` wheel's 4.x.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

type Osr = *mut c_void;

/// OpenSlide's function table. The `Library` is kept alive as long as any function pointer
/// copied out of it may be called, because every [`RawSlide`] holds an `Arc<Api>`.
pub(super) struct Api {
    open: unsafe extern "C" fn(*const c_char) -> Osr,
    close: unsafe extern "C" fn(Osr),
    detect_vendor: unsafe extern "C" fn(*const c_char) -> *const c_char,
    get_level_count: unsafe extern "C" fn(Osr) -> i32,
    get_level_dimensions: unsafe extern "C" fn(Osr, i32, *mut i64, *mut i64),
    get_level_downsample: unsafe extern "C" fn(Osr, i32) -> f64,
    read_region: unsafe extern "C" fn(Osr, *mut u32, i64, i64, i32, i64, i64),
    get_error: unsafe extern "C" fn(Osr) -> *const c_char,
    get_property_names: unsafe extern "C" fn(Osr) -> *const *const c_char,
    get_property_value: unsafe extern "C" fn(Osr, *const c_char) -> *const c_char,
    get_associated_image_names: unsafe extern "C" fn(Osr) -> *const *const c_char,
    get_associated_image_dimensions: unsafe extern "C" fn(Osr, *const c_char, *mut i64, *mut i64),
    read_associated_image: unsafe extern "C" fn(Osr, *const c_char, *mut u32),
    get_version: unsafe extern "C" fn() -> *const c_char,
    get_icc_profile_size: Option<unsafe extern "C" fn(Osr) -> i64>,
    read_icc_profile: Option<unsafe extern "C" fn(Osr, *mut c_void)>,
    _lib: libloading::Library,
}

/// Copies a C string owned by OpenSlide into a Rust `String` (lossy UTF-8).
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string that stays valid for this call.
unsafe fn copy_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-null, and the caller guarantees NUL termination and validity.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// Copies a NULL-terminated array of C strings owned by OpenSlide.
///
/// # Safety
/// `list` must be null or a NULL-terminated array of valid C strings.
unsafe fn copy_list(list: *const *const c_char) -> Vec<String> {
    let mut out = Vec::new();
    if list.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: the array is NULL-terminated, so every index up to and including the
        // terminator is in bounds.
        let p = unsafe { *list.add(i) };
        if p.is_null() {
            break;
        }
        // SAFETY: each element before the terminator is a valid C string.
        out.extend(unsafe { copy_str(p) });
        i += 1;
    }
    out
}

fn c_path(path: &Path) -> Option<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).ok()
}

impl Api {
    /// Loads the library at `path` (a file path, or a bare soname searched by the dynamic
    /// loader) and resolves OpenSlide's functions.
    pub(super) fn load(path: &Path) -> Result<Api, String> {
        // SAFETY: loading a shared library runs its initialisers. We only load files that the
        // user named or that are installed as OpenSlide (a Python wheel or the system
        // package); OpenSlide's initialisers only set up GLib/libxml state.
        let lib =
            unsafe { libloading::Library::new(path.as_os_str()) }.map_err(|e| e.to_string())?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol is declared in openslide.h with exactly the type of the
                // field it is stored in; the pointer is copied out and `lib` is stored beside
                // it, so it never outlives the library.
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{} is not OpenSlide: {e}", path.display()))?
            };
        }
        macro_rules! optional {
            ($name:literal) => {
                // SAFETY: as for `sym!`; absent in OpenSlide 3.4, hence optional.
                unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .ok()
                    .map(|s| *s)
            };
        }
        Ok(Api {
            open: sym!("openslide_open"),
            close: sym!("openslide_close"),
            detect_vendor: sym!("openslide_detect_vendor"),
            get_level_count: sym!("openslide_get_level_count"),
            get_level_dimensions: sym!("openslide_get_level_dimensions"),
            get_level_downsample: sym!("openslide_get_level_downsample"),
            read_region: sym!("openslide_read_region"),
            get_error: sym!("openslide_get_error"),
            get_property_names: sym!("openslide_get_property_names"),
            get_property_value: sym!("openslide_get_property_value"),
            get_associated_image_names: sym!("openslide_get_associated_image_names"),
            get_associated_image_dimensions: sym!("openslide_get_associated_image_dimensions"),
            read_associated_image: sym!("openslide_read_associated_image"),
            get_version: sym!("openslide_get_version"),
            get_icc_profile_size: optional!("openslide_get_icc_profile_size"),
            read_icc_profile: optional!("openslide_read_icc_profile"),
            _lib: lib,
        })
    }

    /// `openslide_get_version()`.
    pub(super) fn version(&self) -> String {
        // SAFETY: takes no arguments and returns a static string.
        unsafe { copy_str((self.get_version)()) }.unwrap_or_else(|| "unknown".into())
    }

    /// True when the library has OpenSlide 4's ICC API.
    pub(super) fn has_icc(&self) -> bool {
        self.get_icc_profile_size.is_some() && self.read_icc_profile.is_some()
    }

    /// `openslide_detect_vendor(path)`: the vendor name, or `None` when not recognised.
    pub(super) fn detect_vendor(&self, path: &Path) -> Option<String> {
        let c = c_path(path)?;
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call; the
        // result is a static string or NULL.
        unsafe { copy_str((self.detect_vendor)(c.as_ptr())) }
    }
}

/// One open `openslide_t`. Closed on drop.
pub(super) struct RawSlide {
    api: Arc<Api>,
    osr: NonNull<c_void>,
}

// SAFETY: openslide.h: "All functions except openslide_close() are thread-safe"; an
// `openslide_t` "can be used concurrently from multiple threads without locking". Close is
// only called from `Drop`, which has exclusive access. Moving the pointer between threads is
// safe because `Arc`/ownership transfer provides the required memory barrier.
unsafe impl Send for RawSlide {}
// SAFETY: see `Send`: every method except drop is a thread-safe OpenSlide call.
unsafe impl Sync for RawSlide {}

impl RawSlide {
    /// `openslide_open(path)`. `None` when OpenSlide does not recognise the file; a returned
    /// handle may already be in the error state (check [`RawSlide::error`]).
    pub(super) fn open(api: Arc<Api>, path: &Path) -> Option<RawSlide> {
        let c = c_path(path)?;
        // SAFETY: `c` is a valid C string for the call; the result is NULL or a new handle we
        // now own.
        let osr = unsafe { (api.open)(c.as_ptr()) };
        NonNull::new(osr).map(|osr| RawSlide { api, osr })
    }

    fn ptr(&self) -> Osr {
        self.osr.as_ptr()
    }

    /// `openslide_get_error`: the latched error message, if any.
    pub(super) fn error(&self) -> Option<String> {
        // SAFETY: valid handle; the returned string belongs to the handle and is copied at once.
        unsafe { copy_str((self.api.get_error)(self.ptr())) }
    }

    /// `openslide_get_level_count` (-1 on error).
    pub(super) fn level_count(&self) -> i32 {
        // SAFETY: valid handle.
        unsafe { (self.api.get_level_count)(self.ptr()) }
    }

    /// `openslide_get_level_dimensions` ((-1, -1) on error).
    pub(super) fn level_dimensions(&self, level: i32) -> (i64, i64) {
        let (mut w, mut h) = (-1i64, -1i64);
        // SAFETY: valid handle; `w` and `h` are valid for writes.
        unsafe { (self.api.get_level_dimensions)(self.ptr(), level, &mut w, &mut h) };
        (w, h)
    }

    /// `openslide_get_level_downsample` (-1 on error).
    pub(super) fn level_downsample(&self, level: i32) -> f64 {
        // SAFETY: valid handle.
        unsafe { (self.api.get_level_downsample)(self.ptr(), level) }
    }

    /// All property names.
    pub(super) fn property_names(&self) -> Vec<String> {
        // SAFETY: valid handle; the array belongs to the handle and is copied at once.
        unsafe { copy_list((self.api.get_property_names)(self.ptr())) }
    }

    /// One property's value.
    pub(super) fn property(&self, name: &str) -> Option<String> {
        let c = CString::new(name).ok()?;
        // SAFETY: valid handle and C string; the value belongs to the handle and is copied.
        unsafe { copy_str((self.api.get_property_value)(self.ptr(), c.as_ptr())) }
    }

    /// All associated image names.
    pub(super) fn associated_image_names(&self) -> Vec<String> {
        // SAFETY: valid handle; the array belongs to the handle and is copied at once.
        unsafe { copy_list((self.api.get_associated_image_names)(self.ptr())) }
    }

    /// Dimensions of one associated image ((-1, -1) on error or unknown name).
    pub(super) fn associated_image_dimensions(&self, name: &str) -> (i64, i64) {
        let Ok(c) = CString::new(name) else {
            return (-1, -1);
        };
        let (mut w, mut h) = (-1i64, -1i64);
        // SAFETY: valid handle and C string; `w`, `h` valid for writes.
        unsafe {
            (self.api.get_associated_image_dimensions)(self.ptr(), c.as_ptr(), &mut w, &mut h)
        };
        (w, h)
    }

    /// `openslide_read_region` into a new buffer of `w * h` premultiplied ARGB words.
    /// The caller has checked `w`, `h` > 0 and the pixel limit.
    pub(super) fn read_region(&self, x: i64, y: i64, level: i32, w: i64, h: i64) -> Vec<u32> {
        let n = (w.max(0) as usize).saturating_mul(h.max(0) as usize);
        let mut buf = vec![0u32; n];
        if n == 0 {
            return buf;
        }
        // SAFETY: valid handle; `buf` holds exactly w*h u32 words, which is what
        // openslide_read_region writes.
        unsafe { (self.api.read_region)(self.ptr(), buf.as_mut_ptr(), x, y, level, w, h) };
        buf
    }

    /// `openslide_read_associated_image` into a new buffer of `w * h` ARGB words, where
    /// `(w, h)` are the dimensions OpenSlide reported for `name`.
    pub(super) fn read_associated_image(&self, name: &str, w: i64, h: i64) -> Vec<u32> {
        let n = (w.max(0) as usize).saturating_mul(h.max(0) as usize);
        let mut buf = vec![0u32; n];
        let Ok(c) = CString::new(name) else {
            return buf;
        };
        if n == 0 || self.associated_image_dimensions(name) != (w, h) {
            return buf;
        }
        // SAFETY: valid handle and C string; `buf` holds w*h words, the dimensions OpenSlide
        // itself reports for this image (checked just above).
        unsafe { (self.api.read_associated_image)(self.ptr(), c.as_ptr(), buf.as_mut_ptr()) };
        buf
    }

    /// The ICC profile size in bytes (OpenSlide 4 only): `None` without the API, -1 on error.
    pub(super) fn icc_profile_size(&self) -> Option<i64> {
        let f = self.api.get_icc_profile_size?;
        // SAFETY: valid handle; the symbol has openslide.h's signature.
        Some(unsafe { f(self.ptr()) })
    }

    /// Reads the ICC profile into a buffer of `size` bytes, as reported by
    /// [`RawSlide::icc_profile_size`].
    pub(super) fn read_icc_profile(&self, size: i64) -> Option<Vec<u8>> {
        let f = self.api.read_icc_profile?;
        if size <= 0 || self.icc_profile_size() != Some(size) {
            return None;
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: valid handle; `buf` holds exactly the size OpenSlide reports (checked above).
        unsafe { f(self.ptr(), buf.as_mut_ptr().cast()) };
        Some(buf)
    }
}

impl Drop for RawSlide {
    fn drop(&mut self) {
        // SAFETY: we own the handle; `drop` has exclusive access, so no other thread is using
        // it, as openslide_close requires. It is never used again.
        unsafe { (self.api.close)(self.ptr()) };
    }
}
