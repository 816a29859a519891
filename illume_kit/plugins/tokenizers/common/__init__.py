"""Pieces both semantic tokenizers (``dualvitok``, ``siglip``) build from, so neither imports the other.

``params`` (torch-free): the teacher's ``TeacherParams``. ``teacher``: the frozen teacher's input
wrapper (``Teacher``: build, preprocess, read features). ``semantic``: the semantic branch
(``SemanticEncoder``, ``SemanticDecoder``, ``semantic_cosine_loss``). ``quantizer``: a codebook's
quantizer built to the tokenizer's code width (``build_code_quantizer``). Module and attribute names
inside each piece are part of the checkpoint format (state-dict keys).
"""
