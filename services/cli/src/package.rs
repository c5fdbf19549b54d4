//! Building a code package: a directory is zipped (executable bits kept, so a
//! `bootstrap` stays runnable); a `.zip` file is taken as it is.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};

pub fn package(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if !bytes.starts_with(b"PK") {
            bail!(
                "{} is not a .zip file (pass a directory to have it zipped)",
                path.display()
            );
        }
        return Ok(bytes);
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let mut files = Vec::new();
    collect(path, path, &mut files)?;
    files.sort();
    if files.is_empty() {
        bail!("{} is empty", path.display());
    }
    for rel in files {
        let full = path.join(&rel);
        let mode = std::fs::metadata(&full)?.permissions().mode();
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
        zip.start_file(rel.to_string_lossy(), opts)?;
        zip.write_all(
            &std::fs::read(&full).with_context(|| format!("reading {}", full.display()))?,
        )?;
    }
    zip.finish()?;
    Ok(buf.into_inner())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "__pycache__" || name == ".git" {
            continue;
        }
        let ft = entry.file_type()?;
        let p = entry.path();
        if ft.is_dir() {
            collect(root, &p, out)?;
        } else if ft.is_file() {
            out.push(p.strip_prefix(root)?.to_path_buf());
        }
    }
    Ok(())
}
