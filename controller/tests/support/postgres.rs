//! A real PostgreSQL server for a test: Debian's `postgresql` package
//! (scripts/setup installs it), a cluster in a temp dir on a free port,
//! owned by the `postgres` user when the tests run as root (initdb refuses
//! root), stopped when dropped. Shared by the controller's unit and
//! integration tests (`#[path]`-included by the unit tests).

use std::path::PathBuf;
use std::process::Command;

/// A running cluster; stopped (immediately) when dropped.
pub struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Server {
    /// Initialises and starts a cluster, trusting local connections.
    pub fn start() -> Server {
        Server::start_with(None)
    }

    /// The same, taking TCP connections over TLS only, with the
    /// certificate and key `scripts/dev-tls` made in `certs`
    /// (`server.pem`, `server.key`).
    pub fn start_tls(certs: &std::path::Path) -> Server {
        Server::start_with(Some(certs))
    }

    fn start_with(tls: Option<&std::path::Path>) -> Server {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let root = is_root();
        if root {
            // The temp dir's parent is 0700 root: the server's own user
            // needs a way in, and the cluster a directory it owns.
            std::fs::set_permissions(
                dir.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        let data = dir.path().join("cluster");
        std::fs::create_dir(&data).unwrap();
        if root {
            chown_to_postgres(&data);
        }
        let out = as_server(root, &bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port: taken by the kernel, released, and used at once
        // (a clash fails the start, which is retried).
        if let Some(certs) = tls {
            for file in ["server.pem", "server.key"] {
                let to = data.join(file);
                std::fs::copy(certs.join(file), &to).unwrap();
                std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .unwrap();
                if root {
                    chown_to_postgres(&to);
                }
            }
            let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
            conf.push_str(
                "\nssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n",
            );
            std::fs::write(data.join("postgresql.conf"), conf).unwrap();
            // TCP only over TLS: a client in the clear is refused.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
        }
        let mut server = Server { dir, bin, port: 0 };
        for _ in 0..5 {
            server.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if server.pg_ctl_start() {
                return server;
            }
        }
        panic!(
            "PostgreSQL did not start; see {}",
            data.join("server.log").display()
        );
    }

    fn pg_ctl_start(&self) -> bool {
        let data = self.dir.path().join("cluster");
        as_server(is_root(), &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                data.display()
            ))
            .args(["-l"])
            .arg(data.join("server.log"))
            .args(["-w", "-t", "30", "start"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Stops the server (a database outage), ending every session.
    pub fn stop(&self) {
        let status = as_server(is_root(), &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("cluster"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl stop");
    }

    /// Starts it again on the same port, after [`Server::stop`].
    pub fn resume(&self) {
        assert!(self.pg_ctl_start(), "pg_ctl start");
    }

    /// A URL to a new, empty database of this server.
    pub fn database(&self) -> String {
        let name = format!("test_{}", std::process::id()) + &unique();
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-c",
            ])
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` on database `url`, returning psql's output (unaligned).
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = as_server(is_root(), &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("cluster"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Debian keeps the server's programs in a versioned directory, off PATH.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/setup (Debian's postgresql package)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin: run scripts/setup")
}

fn as_server(root: bool, program: &std::path::Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn chown_to_postgres(path: &std::path::Path) {
    let user = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("user postgres");
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
}

/// A suffix no other database of this process has.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "_{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}
