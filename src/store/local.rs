//! The local-disk blob backend: `<root>/<aa>/<bb>/<id>`.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{BlobInfo, BlobStore, fsync_dir};

/// Blobs as files under a fan-out directory tree.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating) a store rooted at `root`.
    pub fn open(root: &Path) -> io::Result<LocalStore> {
        fs::create_dir_all(root)?;
        Ok(LocalStore {
            root: root.to_owned(),
        })
    }

    /// The path a blob id lives at. Ids are hex, checked here so that no
    /// id can name a path outside the store.
    pub fn path_of(&self, id: &str) -> io::Result<PathBuf> {
        if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad blob id"));
        }
        Ok(self.root.join(&id[0..2]).join(&id[2..4]).join(id))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl BlobStore for LocalStore {
    fn adopt(&self, id: &str, file: &Path) -> io::Result<()> {
        let dest = self.path_of(id)?;
        let dir = dest.parent().unwrap_or(&self.root);
        if dest.exists() {
            // Same bytes already stored: stamp the stored blob, so a GC
            // run that saw it unreferenced spares it for the grace period
            // while this publish commits its row.
            fs::File::options()
                .write(true)
                .open(&dest)?
                .set_modified(std::time::SystemTime::now())?;
            fs::remove_file(file)?;
            return Ok(());
        }
        let created = !dir.exists();
        fs::create_dir_all(dir)?;
        // Stamp it: GC spares unreferenced blobs younger than its grace
        // period, and a part file may be hours old when it is adopted.
        fs::File::options()
            .write(true)
            .open(file)?
            .set_modified(std::time::SystemTime::now())?;
        fs::rename(file, &dest)?;
        fsync_dir(dir)?;
        if created {
            // The new fan-out directories must be durable too.
            if let Some(parent) = dir.parent() {
                fsync_dir(parent)?;
            }
            fsync_dir(&self.root)?;
        }
        Ok(())
    }

    fn open(&self, id: &str, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let mut f = fs::File::open(self.path_of(id)?)?;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset))?;
        }
        Ok(Box::new(f))
    }

    fn exists(&self, id: &str) -> io::Result<bool> {
        Ok(self.path_of(id)?.exists())
    }

    fn list(&self) -> io::Result<Vec<BlobInfo>> {
        let mut out = vec![];
        for a in subdirs(&self.root)? {
            for b in subdirs(&a)? {
                for entry in fs::read_dir(&b)? {
                    let entry = entry?;
                    let Some(meta) = super::listed_metadata(&entry)? else {
                        continue;
                    };
                    let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if meta.is_file() && self.path_of(&id).is_ok() {
                        out.push(BlobInfo {
                            id,
                            size: meta.len(),
                            modified: meta.modified()?,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    fn modified(&self, id: &str) -> io::Result<Option<std::time::SystemTime>> {
        match fs::metadata(self.path_of(id)?) {
            Ok(m) => Ok(Some(m.modified()?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.path_of(id)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

fn subdirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = vec![];
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.push(entry.path());
        }
    }
    Ok(out)
}
