//! A PostgreSQL server of the test's own: a new cluster in a temporary directory (`initdb`),
//! started on a free loopback port (`pg_ctl`), stopped and removed when dropped. The server
//! refuses to run as root, so under root it runs as the `postgres` system user. A machine
//! without PostgreSQL fails the test saying what to install (`tests/peers.sh` installs it).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub struct TestPostgres {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    pub url: String,
}

/// The directory of `initdb` and `pg_ctl`: on the `PATH`, else Debian's versioned directory.
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
    if let Some(dir) = on_path {
        return dir;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|dir| dir.join("initdb").is_file())
        .unwrap_or_else(|| {
            panic!("PostgreSQL's initdb and pg_ctl are missing: install Debian's postgresql package (tests/peers.sh does)")
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

impl TestPostgres {
    pub fn start(name: &str) -> TestPostgres {
        let dir = std::env::temp_dir().join(format!("pa-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the server");
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown the server's directory to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let server = TestPostgres {
            bin: bin_dir(),
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            as_postgres,
        };
        let data = server.dir.join("data");
        server.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
            server.dir.display()
        );
        server.run(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-o",
                &options,
                "-l",
                &server.dir.join("log").display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        server
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|error| panic!("running {}: {error}", program.display()));
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}{}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `options` for the node `node` of a cluster on this server. `lease_secs`, when given,
    /// is how long a silent node keeps its runs before another takes them over.
    pub fn node_options(
        &self,
        node: &str,
        lease_secs: Option<u64>,
        mut options: crate::HostOptions,
    ) -> crate::HostOptions {
        options
            .env
            .push(("PA_STORAGE__URL".to_owned(), self.url.clone()));
        options
            .env
            .push(("PA_CLUSTER__NODE_ID".to_owned(), node.to_owned()));
        if let Some(lease_secs) = lease_secs {
            options
                .env
                .push(("PA_CLUSTER__LEASE_SECS".to_owned(), lease_secs.to_string()));
        }
        options
    }

    /// Ends every client connection, as a server restart or an administrator would.
    pub fn end_connections(&self) {
        self.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        );
    }

    /// Runs `sql` with `psql` (which Debian's server package brings); its rows, one per line,
    /// fields separated by `|`.
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|error| panic!("psql failed: {error}"))
    }

    /// [`TestPostgres::query`], with the server's refusal as the error instead of a failed test.
    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let beside = self.bin.join("psql");
        let psql = if beside.is_file() {
            beside
        } else {
            PathBuf::from("psql")
        };
        let output = Command::new(&psql)
            .args([&self.url, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .unwrap_or_else(|error| panic!("running {}: {error}", psql.display()));
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The process ids of the server's backends serving connections named `application_name`.
    pub fn backends_named(&self, application_name: &str) -> Vec<u32> {
        self.query(&format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = '{application_name}'"
        ))
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
    }

    /// Restarts the server (fast shutdown: clients are disconnected), on the same port and data.
    pub fn restart(&self) {
        let data = self.dir.join("data").display().to_string();
        let log = self.dir.join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-m", "fast", "-w", "-t", "60", "restart",
            ],
        );
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
