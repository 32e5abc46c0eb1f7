//! Reading configuration files (policy, tokens, certificates) so that a path pointing
//! somewhere odd cannot hang or balloon the process: only regular files, opened
//! without blocking (a FIFO would block `open` itself), no larger than a cap.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Context, Result};

/// No configuration file kubetape reads comes near this.
pub const MAX_CONFIG_FILE: u64 = 4 * 1024 * 1024;

/// Reads a whole regular file of at most [`MAX_CONFIG_FILE`] bytes.
pub fn read_config(path: &Path) -> Result<Vec<u8>> {
    let what = || format!("reading {}", path.display());
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).with_context(what)?;
    let meta = file.metadata().with_context(what)?;
    if !meta.is_file() {
        crate::bail!("reading {}: expected a regular file, found {}", path.display(), kind(&meta.file_type()));
    }
    if meta.len() > MAX_CONFIG_FILE {
        crate::bail!("reading {}: {} bytes is more than the {MAX_CONFIG_FILE} a configuration file may have", path.display(), meta.len());
    }
    // The size can change between fstat and read: the cap holds whatever is there.
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_FILE + 1).read_to_end(&mut data).with_context(what)?;
    if data.len() as u64 > MAX_CONFIG_FILE {
        crate::bail!("reading {}: grew past {MAX_CONFIG_FILE} bytes while being read", path.display());
    }
    Ok(data)
}

/// Reads a configuration file as UTF-8 text.
pub fn read_config_text(path: &Path) -> Result<String> {
    String::from_utf8(read_config(path)?).map_err(|_| crate::error::Error::new(format!("reading {}: expected UTF-8 text", path.display())))
}

fn kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files() {
        let dir = std::env::temp_dir().join(format!("kubetape-file-{}", crate::net::random::hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("policy.json");
        std::fs::write(&ok, "{}").unwrap();
        assert_eq!(read_config_text(&ok).unwrap(), "{}");
        let zero = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_config(&zero).unwrap_err().to_string().contains("a character device"));
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path we own, with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_config(&fifo).unwrap_err().to_string().contains("a FIFO"), "no hang on a FIFO");
        let big = dir.join("big");
        std::fs::File::create(&big).unwrap().set_len(MAX_CONFIG_FILE + 1).unwrap();
        assert!(read_config(&big).is_err());
        assert!(read_config(&dir).unwrap_err().to_string().contains("a directory"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
