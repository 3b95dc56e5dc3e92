// Custos portal: progressive enhancement only. Every page works without this script.
// 1. A request page follows its live events (Server-Sent Events) and refreshes its live part.
// 2. A package download shows its progress, checks each chunk against the signed manifest's
//    SHA-256 and shows the whole file's SHA-256 once checked.
"use strict";
(function () {
  function hex(buffer) {
    return Array.from(new Uint8Array(buffer)).map(function (b) { return b.toString(16).padStart(2, "0"); }).join("");
  }

  function followLive(live) {
    if (!window.EventSource) return;
    var source = new EventSource(live.dataset.events);
    var status = document.getElementById("live-status");
    var pending = false;
    var deferred = false;
    // Never replace what a person is typing: while a field of the live part has focus or text,
    // the refresh waits until they leave it.
    function busy() {
      var active = document.activeElement;
      if (active && live.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) return true;
      if (live.querySelector(".download[data-busy]")) return true; // a download in progress keeps its progress bar
      return Array.prototype.some.call(live.querySelectorAll("textarea, input:not([type=hidden])"), function (f) { return f.value !== ""; });
    }
    function refresh() {
      if (pending) return;
      if (busy()) { deferred = true; return; }
      pending = true;
      fetch(live.dataset.live, { credentials: "same-origin", redirect: "manual", headers: { "Accept": "text/html" } })
        .then(function (r) {
          // The session ended (a redirect to sign-in): the whole page goes there.
          if (r.type === "opaqueredirect" || r.status === 401) { source.close(); window.location.reload(); throw new Error("signed out"); }
          if (!r.ok) throw new Error(String(r.status));
          return r.text();
        })
        .then(function (html) {
          live.innerHTML = html;
          wireDownloads(live);
          var state = document.getElementById("request-state");
          if (status && state) status.textContent = state.textContent;
        })
        .catch(function () { /* the next event tries again */ })
        .finally(function () { pending = false; });
    }
    live.addEventListener("focusout", function () { if (deferred) { setTimeout(function () { if (!busy()) { deferred = false; refresh(); } }, 0); } });
    source.onmessage = refresh;
    ["request", "clock", "question", "package", "case-member"].forEach(function (kind) { source.addEventListener(kind, refresh); });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  function download(link) {
    var box = link.closest(".download");
    var progress = box.querySelector("progress");
    var output = box.querySelector("output");
    var messages = document.body.dataset;
    progress.hidden = false;
    progress.value = 0;
    box.dataset.busy = "true";
    output.textContent = messages.downloading || "";
    var manifest;
    fetch(link.dataset.manifest, { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.json(); })
      .then(function (m) { manifest = m; return fetch(link.href, { credentials: "same-origin" }); })
      .then(function (response) {
        if (!response.ok) throw new Error(String(response.status));
        var redacted = response.headers.get("Custos-Content") === "redacted";
        var total = Number(response.headers.get("Content-Length")) || manifest.content.size || 0;
        var reader = response.body.getReader();
        var parts = [];
        var received = 0;
        function pump() {
          return reader.read().then(function (step) {
            if (step.done) return;
            parts.push(step.value);
            received += step.value.length;
            if (total > 0) progress.value = Math.min(100, Math.floor(received * 100 / total));
            return pump();
          });
        }
        return pump().then(function () {
          var blob = new Blob(parts, { type: "application/x-ndjson" });
          return blob.arrayBuffer().then(function (bytes) { return { bytes: bytes, blob: blob, redacted: redacted }; });
        });
      })
      .then(function (file) {
        var checks = [];
        if (!file.redacted) {
          var offset = 0;
          manifest.chunks.forEach(function (chunk) {
            var slice = file.bytes.slice(offset, offset + chunk.size);
            offset += chunk.size;
            checks.push(crypto.subtle.digest("SHA-256", slice).then(function (d) {
              if (hex(d) !== chunk.sha256) throw new Error("chunk " + chunk.index);
            }));
          });
          if (offset !== file.bytes.byteLength) checks.push(Promise.reject(new Error("size")));
        }
        return Promise.all(checks)
          .then(function () { return crypto.subtle.digest("SHA-256", file.bytes); })
          .then(function (digest) {
            progress.value = 100;
            var sha = hex(digest);
            output.dataset.sha256 = sha;
            output.dataset.checked = file.redacted ? "redacted" : "chunks";
            output.textContent = (file.redacted ? messages.redacted : messages.checked) + " SHA-256 " + sha;
            delete box.dataset.busy;
            var a = document.createElement("a");
            a.href = URL.createObjectURL(file.blob);
            a.download = link.getAttribute("download");
            document.body.appendChild(a);
            a.click();
            setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 10000);
          });
      })
      .catch(function (e) {
        output.dataset.failed = "true";
        delete box.dataset.busy;
        output.textContent = (messages.downloadFailed || "") + " " + e.message;
      });
  }

  function wireDownloads(root) {
    root.querySelectorAll("a[data-download]").forEach(function (link) {
      link.addEventListener("click", function (event) {
        if (!window.crypto || !crypto.subtle || !window.ReadableStream) return; // the plain link downloads
        event.preventDefault();
        download(link);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live) followLive(live);
    wireDownloads(document);
  });
})();
