// Drives Debian's Chromium (headless, through playwright-core) for tests/it/browser.rs.
//
// Input (environment): SP_ALLOWED_PAGE and SP_DISALLOWED_PAGE, the URLs of two pages that call
// the proxy (see tests/it/browser.rs). Output (stdout): one JSON object with what each page
// showed and every network response the browser received (status, headers, body), so the Rust
// test can assert on them, and on what the upstream received.
import { chromium } from "playwright-core";

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
];

function recorder(page) {
  const responses = [];
  page.on("response", async (response) => {
    const entry = { url: response.url(), status: response.status(), headers: await response.allHeaders() };
    try {
      entry.body = (await response.body()).toString("utf8");
    } catch (error) {
      entry.body = null;
    }
    responses.push(entry);
  });
  return responses;
}

async function visit(browser, url, wait) {
  const page = await browser.newPage();
  const responses = recorder(page);
  const console_ = [];
  page.on("console", (message) => console_.push(message.text()));
  await page.goto(url);
  const result = await page.waitForFunction(() => window.__result, null, { timeout: 30000 }).then((h) => h.jsonValue());
  await page.waitForTimeout(wait);
  const html = await page.content();
  await page.close();
  return { result, html, responses, console: console_ };
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: FLAGS });
try {
  const allowed = await visit(browser, process.env.SP_ALLOWED_PAGE, 200);
  const disallowed = await visit(browser, process.env.SP_DISALLOWED_PAGE, 500);
  process.stdout.write(JSON.stringify({ allowed, disallowed }));
} finally {
  await browser.close();
}
