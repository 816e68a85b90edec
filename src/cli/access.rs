//! Where the repository is and how to unlock it: the `--repo` location and the password
//! sources, in order: `--password-file` / `HOSTAGENT_PASSWORD_FILE`, `HOSTAGENT_PASSWORD`,
//! then a prompt when stdin is a terminal. The password is never echoed or logged.

use super::Global;
use crate::error::{Error, Kind, Result};
use crate::store::{LocalStore, ObjectStore};
use std::io::IsTerminal;
use std::sync::Arc;
use zeroize::Zeroizing;

pub fn store(global: &Global) -> Result<Arc<dyn ObjectStore>> {
    let Some(repo) = global.repo.as_deref() else {
        return Err(Error::invalid(
            "no repository given: pass --repo DIR or set HOSTAGENT_REPO",
        ));
    };
    if repo.starts_with("s3://") {
        return Err(Error::new(
            Kind::Unsupported,
            format!(
                "{repo}: S3 repositories are not supported by this build; use a local directory"
            ),
        ));
    }
    let path = repo.strip_prefix("local:").unwrap_or(repo);
    if path.is_empty() {
        return Err(Error::invalid("--repo is empty"));
    }
    Ok(Arc::new(LocalStore::new(path)))
}

/// The password and a description of where it came from, for error messages.
pub fn password(global: &Global, confirm: bool) -> Result<(Zeroizing<Vec<u8>>, String)> {
    if let Some(path) = &global.password_file {
        let raw = Zeroizing::new(std::fs::read(path).map_err(|e| {
            Error::io(
                format!("cannot read the password file {}", path.display()),
                e,
            )
        })?);
        let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Err(Error::invalid(format!(
                "the password file {} is empty",
                path.display()
            )));
        }
        return Ok((
            Zeroizing::new(line.to_vec()),
            format!("the password file {}", path.display()),
        ));
    }
    if let Ok(p) = std::env::var("HOSTAGENT_PASSWORD") {
        return Ok((Zeroizing::new(p.into_bytes()), "HOSTAGENT_PASSWORD".into()));
    }
    if std::io::stdin().is_terminal() {
        let p = Zeroizing::new(
            rpassword::prompt_password("repository password: ")
                .map_err(|e| Error::io("cannot read the password", e))?,
        );
        if confirm {
            let again = Zeroizing::new(
                rpassword::prompt_password("repeat the password: ")
                    .map_err(|e| Error::io("cannot read the password", e))?,
            );
            if *again != *p {
                return Err(Error::invalid("the passwords do not match"));
            }
        }
        return Ok((
            Zeroizing::new(p.as_bytes().to_vec()),
            "the password typed".into(),
        ));
    }
    Err(Error::invalid(
        "no repository password: pass --password-file FILE or set HOSTAGENT_PASSWORD_FILE",
    ))
}

/// Asks for a new password on the terminal, twice.
pub fn prompt(label: &str) -> Result<Zeroizing<Vec<u8>>> {
    let p = Zeroizing::new(
        rpassword::prompt_password(label).map_err(|e| Error::io("cannot read the password", e))?,
    );
    let again = Zeroizing::new(
        rpassword::prompt_password("repeat the password: ")
            .map_err(|e| Error::io("cannot read the password", e))?,
    );
    if *again != *p {
        return Err(Error::invalid("the passwords do not match"));
    }
    Ok(Zeroizing::new(p.as_bytes().to_vec()))
}
