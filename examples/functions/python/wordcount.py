#!/usr/bin/env python3
"""nanofaas example (local dispatcher, JSON mode): counts words.

stdin:  {"input": {"text": "..."} or "...", "metadata": {...}}
stdout: {"words": <count>, "top": [[word, count], ...]}
"""
import json
import re
import sys
from collections import Counter

request = json.load(sys.stdin)
data = request["input"]
text = data["text"] if isinstance(data, dict) else str(data)
words = re.findall(r"[a-z']+", text.lower())
top = Counter(words).most_common(3)
json.dump({"words": len(words), "top": [[w, c] for w, c in top]}, sys.stdout)
