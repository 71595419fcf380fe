#!/usr/bin/env python3
"""tuspy runner for ferry's tests (tests/tus_clients.rs).

    python3 upload.py '<options JSON>'

Options: endpoint (the cache's tus URL), file (a NAR on disk), metadata
(dict: store_path, nar_hash, nar_size, references, ...), token,
chunk_size, checksum (send Upload-Checksum with every chunk, sha1 by
default), stop_at (stop at this offset), url (resume this upload).

Prints one JSON line: {"url", "offset", "size"}. A failed upload raises
(non-zero exit, traceback on stderr); retries are off.
"""
import json
import os
import sys

from tusclient import client

opts = json.loads(sys.argv[1])
tus = client.TusClient(opts["endpoint"], headers={"Authorization": f"Bearer {opts['token']}"})
uploader = tus.uploader(
    file_path=opts["file"],
    url=opts.get("url"),
    chunk_size=opts["chunk_size"],
    metadata=opts["metadata"],
    upload_checksum=bool(opts.get("checksum", False)),
    retries=0,
)
uploader.upload(stop_at=opts.get("stop_at"))
print(json.dumps({"url": uploader.url, "offset": uploader.offset, "size": os.path.getsize(opts["file"])}))
