"""Take the screenshot of the chat page (docs/images/chat_page.png) in headless chromium.

    python bench/screenshot_chat.py --checkpoint runs/demo            # after `gptcourse demo`
    # docs/images/chat_page.png: GPTCOURSE_PROFILE=cpu gptcourse demo --max-steps 400, then the above
    python bench/screenshot_chat.py --pretrained gpt2 --message "Name three colours."

It serves the model with `gptcourse.serve` on a free loopback port, opens `/` in chromium
(Debian: `apt-get install chromium chromium-driver`; `pip install selenium`), asks one
question, waits for the streamed answer to end and saves the page. A trained model makes the
answer readable text; a random one makes noise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from gptcourse.serve import background, create_app, load_for_serving


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a run or checkpoint folder")
    src.add_argument("--pretrained", help="GPT-2 weights: a hub id or a folder")
    p.add_argument("--out", default="docs/images/chat_page.png")
    p.add_argument("--system", default="You tell short stories for children.")
    p.add_argument("--message", default="Tell me a story about a dog and a red ball.")
    p.add_argument("--temperature", default="0.7")
    p.add_argument("--max-tokens", default="", help="default: what the context leaves")
    p.add_argument("--size", default="1100,680", help="the window, WIDTH,HEIGHT")
    args = p.parse_args(argv)

    chrome = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_path = shutil.which("chromedriver")
    if not chrome or not driver_path:
        print("error: needs chromium and chromedriver on PATH (apt-get install chromium chromium-driver)")
        return 1
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model, tokenizer, name = load_for_serving(args.checkpoint, args.pretrained, "cpu")
    app = create_app(model, tokenizer, model_name=name)
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={args.size}", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        with background(app) as url:
            driver.get(url + "/")
            WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model").text == name)
            for element_id, value in (("system", args.system), ("temperature", args.temperature),
                                      ("max-tokens", args.max_tokens), ("prompt", args.message)):
                el = driver.find_element(By.ID, element_id)
                el.clear()
                el.send_keys(value)
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, 300).until(  # the answer is complete, or an error shows
                lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant:not(.streaming)")
                or d.find_element(By.ID, "error").text)
            error = driver.find_element(By.ID, "error").text
            if error:
                print(f"error: the page shows {error!r}")
                return 1
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
            answer = driver.find_element(By.CSS_SELECTOR, ".msg.assistant").text
            print(f"saved {out} ({out.stat().st_size:,} bytes); the answer: {answer!r}")
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
