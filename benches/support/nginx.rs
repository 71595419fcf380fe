//! nginx for the benchmarks: as the reverse proxy a deployment puts in
//! front of ferry (the Cloudflare Tunnel stand-in: `client_max_body_size
//! 100m`, bodies streamed through unbuffered), or as the static file server
//! that read figures are compared with (`sendfile off`, so it copies
//! through user space as ferry does).
//!
//! `worker_processes auto` (one per core: the strongest reference), no
//! access log, every path inside a temp dir. Stopped with SIGTERM to the
//! master (which takes its workers along) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running nginx.
pub struct Nginx {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

/// The nginx binary, when installed.
pub fn binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Nginx {
    /// A reverse proxy to ferry on `upstream` (a port on 127.0.0.1).
    pub fn proxy(upstream: u16) -> Nginx {
        Nginx::launch(&format!(
            "  upstream ferry {{ server 127.0.0.1:{upstream}; keepalive 32; }}\n\
             \x20 server {{ listen 127.0.0.1:{{port}}; client_max_body_size 100m;\n\
             \x20   location / {{ proxy_pass http://ferry; proxy_http_version 1.1;\n\
             \x20     proxy_set_header Connection \"\"; proxy_set_header Host $http_host;\n\
             \x20     proxy_request_buffering off; proxy_buffering off;\n\
             \x20     proxy_read_timeout 300s; proxy_send_timeout 300s; }} }}\n"
        ))
    }

    /// [`Nginx::proxy`] with an access log of `$request_length` per
    /// request (request line, headers and body as nginx read them): the
    /// bytes on the wire, see [`Nginx::wire_bytes`].
    pub fn proxy_logged(upstream: u16) -> Nginx {
        Nginx::launch(&format!(
            "  log_format wire '$request_length';\n\
             \x20 upstream ferry {{ server 127.0.0.1:{upstream}; keepalive 32; }}\n\
             \x20 server {{ listen 127.0.0.1:{{port}}; client_max_body_size 100m;\n\
             \x20   access_log wire.log wire;\n\
             \x20   location / {{ proxy_pass http://ferry; proxy_http_version 1.1;\n\
             \x20     proxy_set_header Connection \"\"; proxy_set_header Host $http_host;\n\
             \x20     proxy_request_buffering off; proxy_buffering off;\n\
             \x20     proxy_read_timeout 300s; proxy_send_timeout 300s; }} }}\n"
        ))
    }

    /// Bytes the clients sent through a [`Nginx::proxy_logged`] so far
    /// (nginx logs a request when it ends).
    pub fn wire_bytes(&self) -> u64 {
        std::fs::read_to_string(self.dir.path().join("wire.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .sum()
    }

    /// Requests a [`Nginx::proxy_logged`] has logged so far.
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("wire.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// A static file server for `root` (`sendfile off`: it copies
    /// through user space, as ferry does).
    pub fn files(root: &Path) -> Nginx {
        Nginx::launch(&format!(
            "  server {{ listen 127.0.0.1:{{port}}; root {}; }}\n",
            root.display()
        ))
    }

    /// [`Nginx::files`] with `sendfile on` (the kernel copies: printed
    /// for information, not as the reference).
    pub fn files_sendfile(root: &Path) -> Nginx {
        Nginx::launch(&format!(
            "  server {{ listen 127.0.0.1:{{port}}; root {}; sendfile on; }}\n",
            root.display()
        ))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn launch(servers: &str) -> Nginx {
        let nginx = binary().expect("nginx is not installed (run .ci/run, it installs it)");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; worker_processes auto; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; sendfile off; keepalive_requests 1000000;\n\
             \x20 default_type application/octet-stream;\n\
             \x20 client_body_temp_path {d}/cb; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;\n\
             \x20 uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             {}}}\n",
            servers.replace("{port}", &port.to_string())
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("nginx.conf");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        super::wait_listening(port);
        Nginx { port, child, dir }
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
