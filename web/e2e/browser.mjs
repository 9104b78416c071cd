// The harness shared by the console's browser scripts (console.mjs,
// console-auth.mjs): a headless Chromium (playwright-core, Debian's
// /usr/bin/chromium) on CONSOLE_URL, the lines exchanged with the Go test
// over stdio, and the page's errors collected so that any uncaught page
// error or console error fails the script.
//
// Environment: CONSOLE_URL (http://host:port/console/), CHROMIUM (the
// browser), USER_DATA_DIR (a fresh profile directory), SCREENSHOT
// (optional: a PNG of the page at the end or on failure).

import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

/** env returns the environment variable name, which must be set. */
export const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

// The flags this machine's Chromium needs as root and without network
// access beyond loopback (see the machine notes in .ci/run).
const args = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** nextLine is the test's next request on stdin. */
export async function nextLine() {
  const { value, done } = await lines.next();
  if (done) throw new Error("the test closed stdin");
  return value;
}

/** say tells the test line on stdout. */
export const say = (line) => process.stdout.write(line + "\n");

/** expectText waits until locator's text contains want. */
export async function expectText(locator, want) {
  await locator.filter({ hasText: want }).first().waitFor();
}

/**
 * drive opens the console in Chromium and runs script(page, noProblems),
 * where noProblems throws the page's errors so far. It reports "done" when
 * script returns, and a failure (with the page's error box) on stderr and
 * in the exit code. With refusalsExpected, the console errors Chromium logs
 * for each call answered with an error status are not problems: the
 * script checks the refusals on the page.
 */
export async function drive(script, { refusalsExpected = false } = {}) {
  const context = await chromium.launchPersistentContext(env("USER_DATA_DIR"), {
    executablePath: env("CHROMIUM"),
    headless: true,
    args,
    timeout: 60_000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(30_000);
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error" && !(refusalsExpected && msg.text().startsWith("Failed to load resource"))) {
      problems.push(`console error: ${msg.text()}`);
    }
  });
  const noProblems = () => {
    if (problems.length > 0) throw new Error(problems.join("\n"));
  };
  try {
    await page.goto(env("CONSOLE_URL"));
    await script(page, noProblems);
    noProblems();
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    say("done");
  } catch (err) {
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true }).catch(() => {});
    const errText = await page.getByTestId("error").textContent().catch(() => "");
    console.error(`console e2e: ${err.stack ?? err}`);
    if (errText) console.error(`the page shows the error: ${errText}`);
    if (problems.length > 0) console.error(problems.join("\n"));
    process.exitCode = 1;
  } finally {
    await context.close();
    lines.return?.();
    process.stdin.destroy();
  }
}
