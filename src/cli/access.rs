//! Where the repository is and how to unlock it: the `--repo` location (a directory or an
//! `s3://` URL with its `--s3-*` settings) and the password sources, in order:
//! `--password-file` / `HOSTAGENT_PASSWORD_FILE`, `HOSTAGENT_PASSWORD`, then a prompt when
//! stdin is a terminal. Neither the password nor S3 secrets are ever echoed or logged.

use super::{Global, S3Args};
use crate::error::{Error, Result};
use crate::store::{
    CacheStore, LocalStore, ObjectStore, RetryPolicy, RetryStore, S3Config, S3Credentials,
    S3Location, S3Store,
};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

fn repo_arg(global: &Global) -> Result<&str> {
    global.repo.as_deref().ok_or_else(|| {
        Error::invalid(
            "no repository given: pass --repo DIR (or s3://BUCKET/PREFIX) or set HOSTAGENT_REPO",
        )
    })
}

/// The S3 settings of an `s3://` repository, from the command line and environment.
pub fn s3_config(url: &str, args: &S3Args) -> Result<S3Config> {
    let location = S3Location::parse(url)?;
    let Some(endpoint) = args.s3_endpoint.as_deref() else {
        return Err(Error::invalid(format!(
            "{url}: an S3 repository needs the server's address: pass --s3-endpoint URL or set \
             HOSTAGENT_S3_ENDPOINT"
        )));
    };
    let credentials = S3Credentials::discover(args.s3_credentials_file.as_deref())?;
    let mut config = S3Config::new(endpoint, location, credentials);
    if let Some(r) = &args.s3_region {
        config.region = r.clone();
    }
    config.path_style = args.s3_path_style;
    config.ca_file = args.s3_ca_file.clone();
    config.insecure = args.s3_insecure;
    if let Some(n) = args.s3_connections {
        if n == 0 {
            return Err(Error::invalid("--s3-connections must be at least 1"));
        }
        config.connections = n;
    }
    config.validate()?;
    Ok(config)
}

fn cache_dir(args: &S3Args) -> Option<PathBuf> {
    if args.no_cache {
        return None;
    }
    args.cache_dir.clone().or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("hostagent"))
    })
}

/// For `repo init` of an S3 repository: checks connectivity, credentials, the bucket and
/// write permission before anything is created. Returns what was checked, for the output.
pub fn check_s3(global: &Global) -> Result<Option<String>> {
    let url = repo_arg(global)?;
    if !url.starts_with("s3://") {
        return Ok(None);
    }
    let mut config = s3_config(url, &global.s3)?;
    // A check should answer quickly: one retry inside the SDK, none above it.
    config.sdk_attempts = 2;
    let store = S3Store::new(config)?;
    store.probe()?;
    Ok(Some(format!(
        "{}: server reachable, credentials accepted, bucket present, test object written, \
         read back and deleted",
        store.location()
    )))
}

pub fn store(global: &Global) -> Result<Arc<dyn ObjectStore>> {
    let repo = repo_arg(global)?;
    if repo.starts_with("s3://") {
        let s3 = RetryStore::new(
            S3Store::new(s3_config(repo, &global.s3)?)?,
            RetryPolicy::default(),
        );
        return Ok(match cache_dir(&global.s3) {
            Some(dir) => Arc::new(CacheStore::new(s3, &dir)),
            None => Arc::new(s3),
        });
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
