"""Twelve parallel sentences in English, Japanese and Korean: short and long, questions and one-word rows.

The tiny tokenizer (``tests/support/tiny.py``) is trained on some of them, so they tokenise compactly.
"""

from __future__ import annotations

EN = [
    "The cat sits on the mat.",
    "I like tea.",
    "Where is the station? It is over there, near the park.",
    "Hi",
    "You must study hard.",
    "We will leave the house tomorrow morning.",
    "Good",
    "The weather is nice today and the sun is shining.",
    "Bread",
    "I am tired.",
    "Do you think it will snow tomorrow?",
    "My brother plays the guitar every evening.",
]
JA = [
    "猫がマットの上に座っている。",
    "お茶が好き。",
    "駅はどこですか。あそこです、公園の近く。",
    "やあ",
    "勉強しなさい。",
    "明日の朝、家を出ます。",
    "良い",
    "今日は天気が良くて太陽が輝いています。",
    "パン",
    "疲れた。",
    "明日は雪が降ると思いますか？",
    "兄は毎晩ギターを弾きます。",
]
KO = [
    "고양이가 매트 위에 앉아 있다.",
    "차를 좋아해요.",
    "역이 어디예요? 공원 근처 저기에 있어요.",
    "안녕",
    "너 공부 열심히 해야 해.",
    "우리는 내일 아침에 집을 떠날 것이다.",
    "좋아",
    "오늘은 날씨가 좋고 해가 빛나고 있어요.",
    "빵",
    "피곤해요.",
    "내일 눈이 올 것 같아요?",
    "형은 매일 저녁 기타를 쳐요.",
]
