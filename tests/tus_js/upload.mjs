// tus-js-client runner for ferry's tests (tests/tus_clients.rs).
//
//   node upload.mjs '<options JSON>'
//
// Options: endpoint (the cache's tus URL), file (a NAR on disk), metadata
// (object: store_path, nar_hash, nar_size, references, ...), token,
// chunkSize, parallelUploads (default 1), abortAfter (stop once at least
// this many bytes are acknowledged), uploadUrl (resume this upload).
//
// Prints one JSON line on stdout: {"url", "done", "aborted", "sent",
// "offset", "size"}; `sent` counts the bytes the server acknowledged
// during this run. Exits 1 with the error on stderr
// when the upload fails (retries are off: every failure shows).
import fs from 'node:fs'
import * as tus from 'tus-js-client'

const opts = JSON.parse(process.argv[2])
const size = fs.statSync(opts.file).size
let sent = 0
let offset = 0
let aborted = false

const upload = new tus.Upload(fs.createReadStream(opts.file), {
  endpoint: opts.endpoint,
  uploadUrl: opts.uploadUrl ?? null,
  chunkSize: opts.chunkSize,
  parallelUploads: opts.parallelUploads ?? 1,
  metadata: opts.metadata,
  headers: { Authorization: `Bearer ${opts.token}` },
  retryDelays: null,
  removeFingerprintOnSuccess: false,
  onChunkComplete(chunk, accepted) {
    sent += chunk
    offset = accepted
    if (opts.abortAfter != null && accepted >= opts.abortAfter && accepted < size) {
      aborted = true
      upload.abort(false).then(() => report(false))
    }
  },
  onSuccess() {
    report(true)
  },
  onError(err) {
    process.stderr.write(`tus upload failed: ${err}\n`)
    process.exit(1)
  },
})

function report(done) {
  const out = { url: upload.url, done, aborted, sent, offset, size }
  process.stdout.write(`${JSON.stringify(out)}\n`)
  process.exit(0)
}

upload.start()
