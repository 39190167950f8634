"""Tokenizer ids must equal OpenAI CLIP's, row layout and truncation included."""

import pytest
import torch

from ttd.models.tokenizer import EOT, SOT, count_tokens, encode, tokenize

# Ids from OpenAI's reference BPE (SimpleTokenizer) on OpenAI's vocabulary, recorded once.
KNOWN_IDS = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "woman spends time in a jacuzzi": [2308, 22508, 788, 530, 320, 2293, 48210],
    "A red STOP sign on a stone road!": [320, 736, 1691, 2292, 525, 320, 2441, 1759, 256],
    "bird taking a bath in waterfall": [3329, 2019, 320, 5713, 530, 16403],
    "sheepdog gripping the wool on a sheep": [23604, 1929, 34567, 518, 13283, 525, 320, 9629],
    "Café crème &amp; croissants": [15304, 1075, 12138, 614, 261, 1192, 49358, 590],
    "  multiple   spaces\tand\nnewlines  ": [6470, 9006, 537, 1218, 3418],
    "don't you're it's we'll": [847, 713, 592, 982, 585, 568, 649, 1342],
    "numbers 12345 and 3.14": [6121, 272, 273, 274, 275, 276, 537, 274, 269, 272, 275],
    "émigré naïve façade": [3459, 3736, 4166, 1097, 35689, 563, 778, 10067, 1928],
    "emoji 🐱 cat": [16327, 22979, 2368],
    "hyphen-ated well-known words": [1441, 745, 576, 268, 943, 1123, 268, 3102, 2709],
    "a photo of many dogs.": [320, 1125, 539, 1346, 3255, 269],
    "itap of a {}.": [529, 2728, 539, 320, 90, 92, 269],
    "": [],
    "UPPER lower MiXeD": [7067, 4909, 6780],
    "the quick brown fox jumps over the lazy dog": [518, 3712, 2866, 3240, 18911, 962, 518, 10753, 1929],
    "中文 字符": [19759, 255, 29032, 485, 35751, 245, 163, 105, 355],
    "tokenization of supercalifragilisticexpialidocious": [32634, 10847, 539, 1642, 2857, 13093, 2076, 5868, 26850, 835, 639, 38466],
}


@pytest.mark.parametrize("text", list(KNOWN_IDS))
def test_ids_match_openai(text):
    assert encode(text) == KNOWN_IDS[text]


def test_documented_example():
    row = tokenize("a photo of a cat")[0].tolist()
    assert row == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_batch_pads_to_longest_row_only():
    tokens = tokenize(["a photo of a cat", "dog"])
    assert tokens.shape == (2, 7)
    assert tokens[1].tolist() == [SOT, 1929, EOT, 0, 0, 0, 0]
    assert tokenize("dog", pad_to_context=True).shape == (1, 77)


def test_truncation_keeps_end_of_text():
    text = " ".join(["word"] * 100)
    assert count_tokens(text) == 102
    row = tokenize(text)[0]
    assert row.shape == (77,)
    assert row[0] == SOT and row[-1] == EOT
    assert torch.all(row[1:-1] == encode("word")[0])


def test_end_of_text_is_the_row_maximum():
    # The text tower reads each row at argmax(ids): EOT must be the largest id in every row.
    tokens = tokenize(list(KNOWN_IDS))
    assert torch.all(tokens.argmax(dim=1) == (tokens != 0).sum(dim=1) - 1)
