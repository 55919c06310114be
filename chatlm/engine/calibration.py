"""Text that int8 quantisation runs through the model once to measure each layer's input range.

Written for this purpose (not taken from any benchmark): a chat in the app's own template, and prose
of the kinds users load (history, science, instructions, numbers), so the measured ranges are those
of serving. The benchmark's perplexity is measured on other text (the shared SQuAD articles).
"""

from __future__ import annotations

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Can you explain how a refrigerator keeps food cold?"},
    {"role": "assistant", "content": (
        "A refrigerator moves heat from inside the cabinet to the room. A liquid called the "
        "refrigerant evaporates in coils inside, absorbing heat; a compressor squeezes the vapour, "
        "and coils at the back release that heat as the vapour condenses again. The cycle repeats "
        "until a thermostat reads the set temperature, usually about 4 °C.")},
    {"role": "user", "content": "Answer from the text. If the text does not say, reply that it does "
                                "not.\n\nText: The bridge opened in 1932 after six years of work. "
                                "It carries two railway tracks and six lanes of traffic.\n\n"
                                "Question: How many lanes does the bridge carry?"},
    {"role": "assistant", "content": "six lanes of traffic"},
    {"role": "user", "content": "Write a short list of three things to pack for a rainy hike."},
    {"role": "assistant", "content": "1. A waterproof jacket with a hood.\n2. Spare dry socks in a "
                                     "sealed bag.\n3. A map in a plastic sleeve, since phones fail "
                                     "in the wet."},
]

PROSE = """\
The river town grew up around a ford where traders crossed with salt and wool. In the twelfth
century a stone church replaced the wooden chapel, and by 1340 the market had a charter from the
king, who granted it a fair each September. Plague reduced the population by nearly half in 1349,
yet within two generations the weavers' guild had rebuilt the bridge and paved the main street.

Photosynthesis turns light into chemical energy. In the chloroplasts of a leaf, chlorophyll absorbs
red and blue light; the energy splits water into oxygen, protons and electrons, and the electrons
drive the synthesis of ATP and NADPH. The Calvin cycle then fixes carbon dioxide into three-carbon
sugars. Roughly 1 to 2 percent of the sunlight that reaches a field ends up stored in its crops.

To reset the router, hold the button on its back for ten seconds until the lights flash amber.
Wait two minutes, then connect to the network named on the label and open http://192.168.0.1 in a
browser. The default password is printed under the barcode; change it on the first screen.

In 2023 the company reported revenue of 4.2 billion euros, up 7 % on the year, and an operating
margin of 11.5 %. Its largest market, Germany, made up 38 % of sales, followed by France (17 %) and
the United States (12 %). The board proposed a dividend of 1.35 euros per share.

def mean(values: list[float]) -> float:
    \"\"\"The arithmetic mean; raises on an empty list.\"\"\"
    return sum(values) / len(values)

Computational complexity theory classifies problems by the resources, such as time and memory,
that any algorithm needs to solve them. A problem is in P when a deterministic machine solves it
in polynomial time, and in NP when a proposed solution can be checked in polynomial time.
"""
