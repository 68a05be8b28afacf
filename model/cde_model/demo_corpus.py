"""A small built-in corpus with queries, for the demo model's quickstart and tests (no torch)."""

from __future__ import annotations

DEMO_CORPUS: tuple[str, ...] = (
    "Mitochondria produce most of the chemical energy a cell needs, in the form of ATP.",
    "Hamlet is a tragedy written by William Shakespeare around the year 1600.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "Mount Everest, on the border of Nepal and China, is the highest mountain above sea level.",
    "Rust is a systems programming language that guarantees memory safety without a garbage "
    "collector.",
    "Triton Inference Server batches incoming requests dynamically to use the GPU efficiently.",
    "Whales are large marine mammals that breathe air and nurse their young.",
    "Inflation is the rate at which the general level of prices for goods and services rises.",
    "The Pythagorean theorem states that the square of the hypotenuse equals the sum of the "
    "squares of the other two sides.",
    "Jazz originated in the African-American communities of New Orleans in the early twentieth "
    "century.",
    "The Great Wall of China was built over centuries to protect against northern invasions.",
    "Vaccines train the immune system to recognize and fight specific pathogens.",
    "A black hole is a region of spacetime where gravity is so strong that nothing escapes.",
    "The French Revolution began in 1789 and overthrew the monarchy.",
    "Sourdough bread is leavened by wild yeast and lactic acid bacteria instead of baker's yeast.",
    "Protocol Buffers serialize structured data; gRPC services are defined in .proto files.",
    "The Amazon rainforest is the largest tropical rainforest on Earth.",
    "Chess is a two-player strategy board game played on a checkered board of 64 squares.",
    "Penicillin, discovered by Alexander Fleming in 1928, was the first widely used antibiotic.",
)

# (query, index of the document in DEMO_CORPUS that answers it)
DEMO_QUERIES: tuple[tuple[str, int], ...] = (
    ("what is the powerhouse of the cell", 0),
    ("who wrote hamlet", 1),
    ("famous landmark in paris", 2),
    ("how do plants make food from sunlight", 3),
    ("tallest mountain in the world", 4),
    ("memory safe programming language without garbage collection", 5),
    ("how does triton batch inference requests", 6),
    ("which sea animals are mammals", 7),
    ("why do prices go up over time", 8),
    ("relation between the sides of a right triangle", 9),
    ("where did jazz music come from", 10),
    ("how do vaccines work", 12),
    ("what happens near a black hole", 13),
    ("first antibiotic discovery", 19),
)
