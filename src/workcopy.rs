//! Working copies: unless a job runs in place, its folder is copied to a fresh
//! directory under `temp/` before a start, so a deploy never collides with a
//! running job. A copy is named after the job's content fingerprint and reused
//! while the content is unchanged.

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::jobs::Runnable;

use crate::layout::job_temp_dir;

/// The folder to run `job` in when no copy has to be made (in place, or a
/// copy of this exact content exists): one `stat` at most.
pub fn existing(temp_dir: &Path, instance: &str, job: &Runnable) -> Option<PathBuf> {
    if job.in_place() {
        return Some(job.script_dir().to_path_buf());
    }
    let target = copy_path(temp_dir, instance, job);
    target.is_dir().then_some(target)
}

fn copy_path(temp_dir: &Path, instance: &str, job: &Runnable) -> PathBuf {
    job_temp_dir(temp_dir, job.key()).join(format!("{instance}-{:016x}", job.fingerprint()))
}

/// Returns the folder to run `job` in, copying it first when needed.
/// Copies are per instance (`<instance>-<fingerprint>`) so daemons that share a
/// temp folder never remove each other's copies.
pub fn prepare(temp_dir: &Path, instance: &str, job: &Runnable) -> io::Result<PathBuf> {
    if let Some(dir) = existing(temp_dir, instance, job) {
        return Ok(dir);
    }
    let base = job_temp_dir(temp_dir, job.key());
    let target = copy_path(temp_dir, instance, job);
    let name = target.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let fresh = match std::fs::create_dir(&base) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(_) => {
            std::fs::create_dir_all(&base)?;
            true
        }
    };
    let staging = base.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    copy_tree(job.script_dir(), &staging)?;
    std::fs::rename(&staging, &target)?;
    if !fresh {
        remove_older_copies(&base, instance, &name);
    }
    Ok(target)
}

fn remove_older_copies(base: &Path, instance: &str, keep: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let prefix = format!("{instance}-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name != keep {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies a folder recursively: files with their permissions, links as links.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;

    fn runnable(dir: &Path, fingerprint: u64) -> Runnable {
        Runnable::example(dir, fingerprint)
    }

    #[test]
    fn copies_once_per_content_and_keeps_modes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("lib")).unwrap();
        std::fs::write(src.join("run.sh"), "echo hi").unwrap();
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(src.join("lib/x"), "x").unwrap();
        let temp = d.path().join("temp");
        let first = prepare(&temp, "i", &runnable(&src, 1)).unwrap();
        assert_eq!(std::fs::metadata(first.join("run.sh")).unwrap().permissions().mode() & 0o777, 0o750);
        assert!(first.join("lib/x").exists());
        assert_eq!(prepare(&temp, "i", &runnable(&src, 1)).unwrap(), first);
        let second = prepare(&temp, "i", &runnable(&src, 2)).unwrap();
        assert_ne!(second, first);
        assert!(!first.exists(), "the old copy is removed");
    }

    #[test]
    fn in_place_jobs_run_from_their_folder() {
        let d = tempfile::tempdir().unwrap();
        let mut job = runnable(d.path(), 1);
        std::sync::Arc::make_mut(&mut job.settings).is_in_place = Some(true);
        assert_eq!(prepare(&d.path().join("t"), "i", &job).unwrap(), d.path());
    }
}
