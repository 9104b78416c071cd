// Drives the web console with etcd's auth enabled, for tests/e2e
// TestWebConsoleAuth, which enables auth with etcdctl (root, and LOGIN_USER
// with readwrite on the prefix PREFIX only) and talks with this script over
// stdio:
//
//   script -> test  "step put KEY"      LOGIN_USER put KEY=VALUE through the console
//   test -> script  "bumped"            the test has set LOGIN_USER's password (to
//                                       the same one), so the token is invalid
//   script -> test  "step got KEY"      the console watched PREFIX and read KEY again,
//                                       with a new token
//   script -> test  "done"              after logging out
//
// Environment: LOGIN_USER, LOGIN_PASSWORD, PREFIX (PREFIX+"a" exists), OUTSIDE (a key
// outside PREFIX), VALUE, and browser.mjs's.

import { drive, env, expectText, nextLine, say } from "./browser.mjs";

const user = env("LOGIN_USER");
const prefix = env("PREFIX");
const outside = env("OUTSIDE");
const value = env("VALUE");

await drive(
  async (page) => {
    const byTest = (id) => page.getByTestId(id);
    const row = (key) => byTest("list-rows").locator(`tr[data-key="${key}"]`);
    const event = (type, key) => byTest("watch-events").locator(`li.${type}[data-key="${key}"]`);
    const list = async (p) => {
      await byTest("list-prefix").fill(p);
      await byTest("list").click();
    };

    // Without a token every call is refused with etcd's message, and the
    // page points at the login form.
    await expectText(byTest("error"), "etcdserver: user name is empty");
    await page.locator("header.login-needed").waitFor();

    await byTest("login-user").fill(user);
    await byTest("login-password").fill(env("LOGIN_PASSWORD"));
    await byTest("login").click();
    await expectText(byTest("session-user"), `logged in as ${user}`);
    if (await byTest("login-form").isVisible()) throw new Error("the login form is shown while logged in");
    if ((await byTest("login-password").inputValue()) !== "") throw new Error("the password stays in the page");
    // The page reloads as the user: the member's status, and all keys,
    // which the user may not read.
    await expectText(byTest("status"), "member ID");
    await expectText(byTest("error"), "etcdserver: permission denied");

    // Inside the prefix: listed; outside it: etcd's permission denied.
    await list(prefix);
    await expectText(byTest("list-summary"), "1 of 1 keys");
    await row(prefix + "a").waitFor();
    if ((await byTest("error").textContent()) !== "") throw new Error("an error listing the prefix");
    await list(outside);
    await expectText(byTest("error"), "etcdserver: permission denied");
    await byTest("list-prefix").fill(prefix); // what the put lists afterwards

    // A watch (a stream, with the token too) and a put in the prefix.
    await byTest("watch-prefix").fill(prefix);
    await byTest("watch-toggle").click();
    await page.locator('[data-testid="watch-state"][data-state="watching"]').waitFor();
    const mine = prefix + "from-browser";
    await byTest("edit-key").fill(mine);
    await byTest("edit-value").fill(value);
    await byTest("put").click();
    await expectText(byTest("edit-result"), `put ${mine} at revision`);
    await expectText(event("PUT", mine), value);
    await expectText(row(mine).locator("td.value"), value);
    say(`step put ${mine}`);

    // The auth store moved on: the console authenticates again, once,
    // with the credentials it kept, and the listing succeeds.
    if ((await nextLine()) !== "bumped") throw new Error("unexpected request from the test");
    // First a new watch: refused for its token, it is created again
    // after authenticating; then a get with the new token.
    await byTest("watch-toggle").click();
    await page.locator('[data-testid="watch-state"][data-state="idle"]').waitFor();
    await byTest("watch-toggle").click();
    await page.locator('[data-testid="watch-state"][data-state="watching"]').waitFor();
    await byTest("get").click();
    await expectText(byTest("edit-result"), `${mine} at mod revision`);
    const shown = await byTest("error").textContent();
    if (shown !== "") throw new Error(`an error after authenticating again: ${shown}`);
    say(`step got ${mine}`);

    // Logged out: the login form is back and calls go without a token.
    await byTest("logout").click();
    await byTest("login-form").waitFor();
    await page.locator('[data-testid="watch-state"][data-state="idle"]').waitFor();
    await list(prefix);
    await expectText(byTest("error"), "etcdserver: user name is empty");
  },
  { refusalsExpected: true },
);
