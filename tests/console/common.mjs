// What every console driver shares: the plan the Rust test passes in REWIND_CONSOLE, the
// timeout, the browser, expectations, polling, a page, the operator's login, and a table
// row by header.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

export const plan = JSON.parse(process.env.REWIND_CONSOLE || "{}");
export const TIMEOUT = 15000;

export function expect(cond, what) {
  if (!cond) throw new Error("console expectation failed: " + what);
}

/// Polls `probe` until `ok(value)` holds; the last value is in the failure message.
export async function until(page, what, probe, ok, within = TIMEOUT) {
  const end = Date.now() + within;
  let last;
  for (;;) {
    last = await probe();
    if (ok(last)) return last;
    if (Date.now() > end) throw new Error(`console expectation failed: ${what}: ${JSON.stringify(last)}`);
    await page.waitForTimeout(100);
  }
}

/// The plan's Chromium, headless, with the plan's artifacts directory made.
export async function launch() {
  mkdirSync(plan.artifacts, { recursive: true });
  return chromium.launch({
    executablePath: plan.chromium,
    // Root in a container has no user namespace for Chromium's sandbox.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
}

export async function newPage(browser, errors) {
  const ctx = await browser.newContext({ viewport: { width: 1366, height: 800 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (e) => errors.push(String(e)));
  return { ctx, page };
}

export async function login(page) {
  await page.goto(plan.url);
  await page.getByTestId("login-name").fill("admin");
  await page.getByTestId("login-secret").fill(plan.secret);
  await page.getByTestId("login-submit").click();
  await page.getByTestId("operator").waitFor({ state: "visible" });
}

/// A row's cells keyed by its table's column headers.
export async function rowByHeader(page, table, row) {
  const heads = await page.locator(`[data-testid="${table}"] thead th`).allTextContents();
  const cells = await row.locator(":scope > td").allTextContents();
  return Object.fromEntries(heads.map((h, i) => [h, (cells[i] ?? "").trim()]));
}

/// The status codes of what a page could send by hand, without the console's help.
