// Runs a template as a user does: opens it from the template browser in headless Chromium (1400x900),
// optionally points its Load Image at IMAGE_NAME (a file in ComfyUI's input folder), presses Run (the
// Comfy.QueuePrompt command, what the Run button does) and watches the LetsTalk Sampler node until the
// prompt ends, noting every text shown on the node beside its progress bar (ComfyUI's progress text).
// Prints as JSON: page errors, the node texts seen, how the prompt ended, and the text of the error
// dialog when it failed; screenshots go to SCREENSHOT_DIR.
// usage: node frontend_run.js CHROMIUM_PATH COMFYUI_URL SCREENSHOT_DIR TEMPLATE_NAME [IMAGE_NAME]
const { openComfyUI, findTemplateCard, openTemplate } = require('./frontend_browser.js');

// Queues the graph on the canvas and resolves with how the prompt ended, calling `watch` every 300 ms.
async function runGraph(page, watch, timeout) {
  await page.evaluate(() => {
    const api = window.comfyAPI.api.api;
    window.__letstalkEnd = null;
    for (const kind of ['execution_success', 'execution_error', 'execution_interrupted']) {
      api.addEventListener(kind, (event) => { window.__letstalkEnd = window.__letstalkEnd || { kind, detail: event.detail }; });
    }
  });
  await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.QueuePrompt'));
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    await watch();
    const end = await page.evaluate(() => window.__letstalkEnd);
    if (end) return end;
    await page.waitForTimeout(300);
  }
  throw new Error(`the prompt did not end within ${timeout / 1000} s`);
}

(async () => {
  const [executablePath, url, shots, name, imageName] = process.argv.slice(2);
  const { browser, page, errors } = await openComfyUI(executablePath, url, { width: 1400, height: 900 });
  try {
    await openTemplate(page, await findTemplateCard(page, name));
    if (imageName) {
      await page.evaluate((image) => {
        const loader = window.app.graph._nodes.find((n) => n.type === 'LoadImage');
        loader.widgets.find((w) => w.name === 'image').value = image;
      }, imageName);
    }
    const texts = [];
    const samplerText = () => page.evaluate(() => {
      const node = window.app.graph._nodes.find((n) => n.type === 'LetsTalkSampler');
      const widget = node && (node.widgets || []).find((w) => w.name === '$$node-text-preview');
      return widget ? String(widget.value) : null;
    });
    const end = await runGraph(page, async () => {
      const text = await samplerText();
      if (text && texts[texts.length - 1] !== text) {
        texts.push(text);
        if (texts.length === 2) await page.screenshot({ path: `${shots}/running.png` });
      }
    }, 1500000);
    let dialog = null;
    if (end.kind === 'execution_error') {
      const box = page.locator('.p-dialog').first();
      await box.waitFor({ timeout: 30000 });
      dialog = await box.innerText();
    }
    await page.screenshot({ path: `${shots}/ended.png` });
    console.log(JSON.stringify({ errors, texts, end: end.kind, dialog }));
  } finally {
    await browser.close();
  }
})().catch((error) => { console.error(error); process.exit(1); });
