"""A fixed English sentence set for judging the embedding quality of quantized sentence encoders.

`SENTENCES` holds a few hundred hand-written, natural English sentences spread over many topics
(cooking, sport, finance, medicine, programming, travel, weather, music, law, history, animals,
space, education, cars, gardening, film, ...), from four to about forty words long, with
questions, negations, numbers, a few rare words and names, and deliberate near-paraphrases so
that every sentence has a clear nearest neighbour.  Encode the set with an fp32 model and with
its quantized copy, then compare the two embedding matrices:

* `mean_cosine` -- mean and worst row-wise cosine similarity between the quantized and the fp32
  embedding of the same sentence (how far each vector moved);
* `nearest_neighbour_agreement` -- for each sentence, whether its most similar *other* sentence
  is the same under both models (whether the retrieval structure survived).

The sentences were written for this project and need no download.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CALIBRATION", "SENTENCES", "mean_cosine", "nearest_neighbour_agreement"]

SENTENCES: tuple[str, ...] = (
    # cooking
    "Add a pinch of salt to the boiling water before the pasta goes in.",
    "Salt the pasta water once it comes to a rolling boil.",
    "She baked a loaf of sourdough bread every Sunday morning.",
    "Every Sunday she made fresh sourdough bread at dawn.",
    "How long should I roast a whole chicken at 200 degrees?",
    "What is the cooking time for a whole chicken in a hot oven?",
    "The soup tasted bland, so he stirred in some miso and a squeeze of lime.",
    "Never put a cast-iron skillet in the dishwasher.",
    "Whisk the eggs and sugar until the mixture turns pale and fluffy.",
    "This recipe needs 250 grams of flour, 3 eggs and 100 millilitres of milk.",
    "Caramelising onions properly takes at least forty minutes over low heat.",
    "I don't eat mushrooms.",
    "The restaurant's tasting menu had eleven courses, including a sorbet made from sea buckthorn.",
    "Let the steak rest for five minutes before you slice it.",
    "Chop the garlic finely.",
    "My grandmother's lasagne recipe calls for béchamel instead of ricotta.",
    "Is it safe to refreeze meat that has already been thawed?",
    # sports
    "The striker scored twice in the final ten minutes to win the match.",
    "With two late goals, the forward secured the victory for his team.",
    "She ran the marathon in under three hours for the first time.",
    "For the first time, she finished a marathon in less than three hours.",
    "Who won the Tour de France in 2019?",
    "The referee showed him a red card for a dangerous tackle.",
    "Our local cricket club has not won a trophy since 1987.",
    "Tennis players switch ends after every odd-numbered game.",
    "He has been training for the triathlon for eight months.",
    "The basketball team lost by a single point after a missed free throw.",
    "Swimming is easier on the joints than running.",
    "The stadium holds about 60,000 spectators.",
    "Can a goalkeeper pick up a deliberate back pass from a teammate?",
    "Despite the rain, the climbers reached the summit of the Eiger before noon.",
    "The chess grandmaster resigned after blundering her queen on move 31.",
    # finance
    "The central bank raised interest rates by a quarter of a percentage point.",
    "Interest rates went up by 0.25% after the central bank's meeting.",
    "Should I pay off my student loan early or invest the money instead?",
    "Is it smarter to repay student debt ahead of schedule or to put the cash into investments?",
    "The company's shares fell 12 percent after it missed its earnings forecast.",
    "Diversification reduces risk but does not eliminate it.",
    "She opened a savings account with a monthly deposit of 200 euros.",
    "Inflation eats away at the value of cash kept under the mattress.",
    "The startup raised forty million dollars in its Series B round.",
    "Bond prices move in the opposite direction to interest rates.",
    "My bank charges a fee for every international transfer.",
    "Quarterly revenue was flat, but operating margins improved.",
    "A mortgage is a loan secured against a property.",
    "He does not trust cryptocurrency exchanges with his savings.",
    # medicine
    "The patient was prescribed antibiotics for a bacterial infection of the lungs.",
    "The doctor gave her antibiotics to treat bacterial pneumonia.",
    "Regular exercise lowers the risk of heart disease.",
    "Physical activity on a regular basis reduces the chance of cardiovascular illness.",
    "What are the early symptoms of type 2 diabetes?",
    "Wash your hands for at least twenty seconds.",
    "The vaccine trial enrolled more than 30,000 volunteers across four countries.",
    "An MRI scan showed a small tear in the meniscus of his left knee.",
    "Antibiotics do not work against viral infections such as the common cold.",
    "She has been taking ibuprofen twice a day for her back pain.",
    "Sleep deprivation impairs memory, mood and concentration.",
    "The nurse checked his blood pressure every four hours.",
    "Is it normal to feel dizzy after donating blood?",
    "Pheochromocytoma is a rare tumour of the adrenal gland.",
    "Drink plenty of water when you have a fever.",
    # programming
    "The function returns None when the list is empty.",
    "If the input list has no elements, the function gives back None.",
    "How do I reverse a string in Python?",
    "What is the easiest way to reverse a string using Python?",
    "The build failed because a dependency was pinned to an incompatible version.",
    "Always write tests before you refactor legacy code.",
    "A hash map gives constant-time lookups on average.",
    "The server crashed with a segmentation fault after the update.",
    "Rust's borrow checker prevents data races at compile time.",
    "This query is slow because the table has no index on the email column.",
    "Git rebase rewrites history, so don't use it on shared branches.",
    "The memory leak was traced to a cache that never evicted old entries.",
    "Why does my JavaScript code print undefined instead of the value?",
    "We migrated the backend from a monolith to a dozen microservices.",
    "Tabs or spaces for indentation?",
    "The compiler optimises away loops whose results are never used.",
    "Matrix multiplication on the GPU was forty times faster than on the CPU.",
    "Integer overflow caused the counter to wrap around to a negative number.",
    # travel
    "Our flight to Lisbon was delayed by three hours.",
    "The plane to Lisbon left three hours late.",
    "Do I need a visa to visit Japan for two weeks?",
    "Is a visa required for a two-week trip to Japan?",
    "We rented a small cottage near the beach for the summer holidays.",
    "The night train from Vienna to Venice crosses the Alps.",
    "Don't forget to bring a power adapter for the sockets in the UK.",
    "The hostel was cheap, clean and close to the old town.",
    "She has visited forty-two countries but never been to Australia.",
    "The museum is closed on Mondays.",
    "Backpacking through Patagonia requires warm clothes even in January.",
    "Our luggage was lost somewhere between Frankfurt and Nairobi.",
    "What is the best time of year to see the northern lights in Tromsø?",
    "The ferry to the island only runs twice a day in winter.",
    # weather
    "Heavy rain is expected across the north of the country tomorrow.",
    "Forecasters predict a lot of rain in northern regions tomorrow.",
    "It has not rained here for almost two months.",
    "There has been no rain in this area for nearly eight weeks.",
    "The temperature dropped to minus fifteen degrees last night.",
    "A thunderstorm knocked out the power in our neighbourhood.",
    "Will it be sunny this weekend?",
    "The hurricane made landfall as a category four storm.",
    "Fog at the airport delayed dozens of morning departures.",
    "Spring came early this year and the cherry trees blossomed in March.",
    "The wind was so strong that it tore the roof off the shed.",
    "Humidity makes thirty degrees feel much hotter.",
    # music
    "The orchestra performed Beethoven's Ninth Symphony to a sold-out hall.",
    "A full concert hall heard the orchestra play Beethoven's ninth.",
    "He learned to play the guitar by watching videos online.",
    "She taught herself guitar from online video lessons.",
    "The band's new album sounds nothing like their early records.",
    "I can't sing in tune.",
    "Jazz musicians often improvise over a fixed chord progression.",
    "The violin was made in Cremona in the early eighteenth century.",
    "Which key is this song written in?",
    "The festival lineup includes three headliners and over a hundred smaller acts.",
    "Practising scales every day improves finger dexterity on the piano.",
    "The drummer kept perfect time through the whole seven-minute song.",
    "Hildegard von Bingen composed liturgical chants in the twelfth century.",
    # law
    "The court ruled that the contract was void because it was signed under duress.",
    "A contract signed under pressure was declared invalid by the judge.",
    "The defendant pleaded not guilty to all charges.",
    "Is it legal to record a phone call without telling the other person?",
    "Can I legally tape a phone conversation without the other party's consent?",
    "The new law bans smoking in all enclosed public spaces.",
    "Her lawyer advised her not to say anything to the press.",
    "The jury deliberated for three days before reaching a verdict.",
    "Copyright protection lasts for seventy years after the author's death.",
    "The landlord cannot evict a tenant without a court order.",
    "He was fined 500 dollars for parking in a disabled space.",
    "The appeal was dismissed by the supreme court.",
    "Habeas corpus protects people from unlawful detention.",
    # history
    "The Roman Empire in the west collapsed in the fifth century.",
    "Western Roman rule came to an end during the 400s.",
    "The printing press transformed how knowledge spread across Europe.",
    "Gutenberg's movable type changed the way information circulated in Europe.",
    "The Berlin Wall fell in November 1989.",
    "Who was the first emperor of China?",
    "The Great Fire of London destroyed thousands of homes in 1666.",
    "Many medieval castles were built on hills for defence.",
    "The Silk Road connected traders from China to the Mediterranean.",
    "The Treaty of Westphalia ended the Thirty Years' War in 1648.",
    "Historians still debate the causes of the First World War.",
    "Ancient Egyptians did not use coins until quite late in their history.",
    "The Hanseatic League dominated trade in the Baltic for centuries.",
    # animals
    "The cat slept on the windowsill all afternoon.",
    "All afternoon the cat dozed on the window ledge.",
    "Dolphins use echolocation to find their prey.",
    "To locate fish, dolphins rely on echolocation.",
    "My dog barks at the postman every single morning.",
    "Elephants can recognise themselves in a mirror.",
    "Are spiders actually insects?",
    "The axolotl can regrow lost limbs and even parts of its heart.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "Polar bears are strong swimmers and can travel long distances at sea.",
    "The parrot repeated every word the children said.",
    "Wolves were reintroduced to Yellowstone in 1995.",
    "Octopuses have three hearts and blue blood.",
    "Our hamster escaped from its cage and hid behind the fridge.",
    # space
    "The telescope captured images of a galaxy billions of light years away.",
    "Astronomers photographed a galaxy that lies billions of light years from Earth.",
    "How long does it take light from the Sun to reach Earth?",
    "Sunlight needs about eight minutes to travel to our planet.",
    "The rover has been exploring the surface of Mars since 2021.",
    "Jupiter is the largest planet in the solar system.",
    "Astronauts on the space station exercise two hours a day to keep their bones strong.",
    "A black hole's gravity is so strong that not even light can escape.",
    "The launch was postponed because of high winds at the pad.",
    "There is no sound in the vacuum of space.",
    "Is there liquid water beneath the ice of Europa?",
    "The Andromeda galaxy will collide with the Milky Way in about four billion years.",
    # education
    "The students had two weeks to finish their history essays.",
    "Pupils were given a fortnight to complete the history assignment.",
    "She is studying for a master's degree in civil engineering.",
    "Online courses let people learn at their own pace.",
    "How many hours a day should a teenager spend on homework?",
    "The university cut tuition fees for students from low-income families.",
    "Our teacher never gave homework on Fridays.",
    "Reading aloud to young children improves their vocabulary.",
    "The exam results will be published at the end of August.",
    "He failed the driving theory test twice before passing.",
    "Class sizes above thirty make it hard for teachers to give individual attention.",
    "The school library is open until six in the evening.",
    # cars
    "My car won't start on cold mornings.",
    "On chilly mornings my car refuses to start.",
    "Electric cars are cheaper to run than petrol cars.",
    "Running an electric vehicle costs less than running a petrol one.",
    "The mechanic said the brake pads need replacing.",
    "How often should I change the oil in my car?",
    "The new model accelerates from zero to a hundred in 4.2 seconds.",
    "Check the tyre pressure before a long motorway drive.",
    "He bought a second-hand hatchback with 80,000 miles on the clock.",
    "The engine warning light came on halfway up the hill.",
    "Self-driving cars still struggle in heavy snow.",
    "Don't leave the engine idling outside the school gates.",
    # gardening
    "Water the tomatoes early in the morning, not in the midday sun.",
    "Tomato plants should be watered at dawn rather than at noon.",
    "Slugs ate all the lettuce seedlings overnight.",
    "Overnight, slugs devoured every young lettuce plant.",
    "Prune the roses in late winter before new growth begins.",
    "Compost improves the structure of heavy clay soil.",
    "When should I plant garlic bulbs?",
    "The apple tree produced so much fruit that a branch snapped.",
    "Lavender prefers dry, sunny spots and well-drained soil.",
    "She grows chillies, basil and mint on her balcony.",
    "Rhododendrons do not tolerate alkaline soil.",
    "Mow the lawn less often in a drought.",
    # film
    "The film won the award for best picture at the festival.",
    "At the festival, the movie took home the top prize.",
    "I fell asleep halfway through the three-hour documentary.",
    "The documentary was three hours long and I dozed off in the middle.",
    "The sequel was not as good as the original.",
    "Who directed the first Alien movie?",
    "The actor spent six months learning to fence for the role.",
    "Subtitles are better than dubbing for foreign films.",
    "The cinema was almost empty on a Tuesday afternoon.",
    "Her debut feature was shot on 16-millimetre film in just nineteen days.",
    "The special effects looked dated even when the film came out.",
    "Spoiler alert: the butler did not do it.",
    # technology and everyday life
    "My phone battery dies before lunch.",
    "The phone's battery barely lasts until midday.",
    "Turn it off and on again.",
    "The printer is out of cyan ink again.",
    "Please remember to lock the front door when you leave.",
    "Don't forget to lock the door on your way out.",
    "We moved into a flat on the fourth floor with no lift.",
    "The meeting has been moved from Tuesday to Thursday at 3 pm.",
    "Thursday at three is the new time for the meeting that was on Tuesday.",
    "I have read the terms and conditions.",
    "She hasn't replied to my email for a week.",
    "The Wi-Fi in the café is free but painfully slow.",
    "Can you recommend a good book about the history of mathematics?",
    # nature and environment
    "Rising sea levels threaten low-lying coastal cities.",
    "Coastal towns near sea level are at risk as the oceans rise.",
    "The forest fire burned more than ten thousand hectares.",
    "Recycling one aluminium can saves enough energy to run a television for three hours.",
    "Coral reefs are bleaching because the water is getting warmer.",
    "The river flooded the village for the second time this year.",
    "Planting trees alone will not solve climate change.",
    "Volcanic ash grounded flights across northern Europe in 2010.",
    # food and health
    "Eating too much sugar can lead to tooth decay.",
    "A diet high in sugar rots your teeth.",
    "Coffee is the second most traded commodity in the world, or so people often claim.",
    "Is breakfast really the most important meal of the day?",
    "He gave up meat five years ago and feels healthier.",
    # work and business
    "The company plans to hire two hundred engineers next year.",
    "Next year the firm intends to recruit 200 new engineers.",
    "Working from home saves me two hours of commuting a day.",
    "The factory will close in March, putting 400 jobs at risk.",
    "Our team missed the deadline because the requirements kept changing.",
    "She was promoted to head of marketing after only eighteen months.",
    "Nobody reads the quarterly newsletter.",
    "The negotiations broke down over pension contributions.",
    # science
    "Water boils at a lower temperature at high altitude.",
    "At high elevations water reaches its boiling point sooner.",
    "DNA carries the genetic instructions of living organisms.",
    "The experiment could not be reproduced by other laboratories.",
    "Other labs failed to replicate the results of the study.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar and oxygen.",
    "An electron carries a negative charge.",
    "Why is the sky blue?",
    "Rayleigh scattering explains why the daytime sky looks blue.",
    "Tardigrades can survive being frozen, boiled and exposed to the vacuum of space.",
    "The half-life of carbon-14 is about 5,730 years.",
    # art, literature, language
    "The painting was sold at auction for 45 million dollars.",
    "Van Gogh sold very few paintings during his lifetime.",
    "Tolstoy's War and Peace is more than twelve hundred pages long.",
    "Who wrote One Hundred Years of Solitude?",
    "Learning a second language is easier when you are young.",
    "Children pick up foreign languages more easily than adults.",
    "The word 'sesquipedalian' means given to using long words.",
    "Her first novel was rejected by fourteen publishers.",
    "The poem was translated into more than sixty languages.",
    # politics and society
    "Voter turnout was the highest in thirty years.",
    "The government announced new funding for rural hospitals.",
    "More money for hospitals in the countryside was promised by the government.",
    "The mayor refused to comment on the corruption allegations.",
    "Thousands of people marched through the city centre to protest against the new tax.",
    "The census counts every person living in the country on a single night.",
    # long sentences
    "After waiting nearly an hour in the rain for a bus that never came, we finally gave up, "
    "walked the three miles home, and arrived soaked to the skin but laughing about the whole thing.",
    "The committee, which had been meeting every Thursday for almost two years, finally published "
    "a report recommending that the old railway line be reopened for passenger trains by 2030.",
    "When the power went out during the storm, the whole family gathered in the kitchen with "
    "candles, played cards until midnight, and agreed it was the best evening they'd had in months.",
    "Although the new software promised to make invoicing faster, the accountants spent the first "
    "month fixing errors it introduced and quietly went back to their old spreadsheets.",
    "She left her job at the bank at the age of forty, retrained as a carpenter, and now builds "
    "custom furniture in a converted barn on the edge of the village.",
    "If you are travelling with small children, book seats near the front of the plane, pack "
    "plenty of snacks, and bring headphones, because a six-hour flight feels much longer with a bored toddler.",
    "The museum's new wing, designed by an architect who had never built anything larger than a "
    "house, opened last spring after six years of delays, two changes of government, and a budget "
    "that ended up nearly three times the original estimate.",
    # short and miscellaneous
    "It is raining again.",
    "Nobody came to the party.",
    "The answer is forty-two.",
    "I am not hungry.",
    "Where are my keys?",
    "The shop sells second-hand bicycles.",
    "He apologised for being late.",
    "That is not what I meant.",
    "Happy birthday to my best friend!",
    "The bridge is closed for repairs until further notice.",
    "Quetzalcoatl was a feathered serpent deity worshipped in Mesoamerica.",
    "Ljubljana is the capital of Slovenia.",
    "The Zyzzyva is a genus of weevils found in South America.",
)


#: A few sentences that are not in SENTENCES: the calibration set of `quantize_dynamic`'s
#: smoothing (four are enough, see zeropoint.workflows.dynamic), kept apart from the evaluation.
CALIBRATION: tuple[str, ...] = (
    "The weather in the mountains changes quickly in spring.",
    "How do I reset my password if I no longer have access to my email?",
    "The court ruled in favour of the defendant after a two-week trial.",
    "Stir the sauce over low heat until it thickens and coats the spoon.",
    "Our quarterly revenue grew by 12 percent despite higher shipping costs.",
    "The rover sent back images of dust storms sweeping across the crater.",
    "She practised the violin concerto every evening before the audition.",
    "The night train to Vienna was delayed by a signal failure near the border.",
)


def _unit_rows(x: Tensor) -> Tensor:
    """Rows of `x` as float64 unit vectors (a zero row stays zero)."""
    return torch.nn.functional.normalize(x.detach().to(torch.float64), dim=1)


def _check_pair(ref: Tensor, test: Tensor) -> None:
    """Raise ValueError unless `ref` and `test` are 2-D and of the same shape."""
    if ref.dim() != 2 or ref.shape != test.shape:
        raise ValueError(
            f"expected two 2-D embedding matrices of the same shape, got {tuple(ref.shape)} "
            f"and {tuple(test.shape)}"
        )


def nearest_neighbour_agreement(ref: Tensor, test: Tensor) -> float:
    """Fraction of rows whose nearest neighbour is the same in `ref` and in `test`.

    Both are `(n, d)` embedding matrices of the same `n` sentences (e.g. fp32 and quantized).
    For each row, its nearest neighbour is the index of the most cosine-similar *other* row of
    the same matrix; the result is the fraction of rows for which that index is the same in both
    matrices, in [0, 1].  Needs `n >= 2`.
    """
    _check_pair(ref, test)
    n = ref.shape[0]
    if n < 2:
        raise ValueError("nearest-neighbour agreement needs at least two rows")
    eye = torch.eye(n, dtype=torch.bool)
    nn_idx = []
    for x in (ref, test):
        u = _unit_rows(x)
        sim = (u @ u.T).masked_fill(eye, float("-inf"))
        nn_idx.append(sim.argmax(dim=1))
    return float((nn_idx[0] == nn_idx[1]).to(torch.float64).mean())


def mean_cosine(ref: Tensor, test: Tensor) -> tuple[float, float]:
    """Mean and minimum of the row-wise cosine similarity between `ref` and `test`.

    Row `i` of `test` is compared with row `i` of `ref` (the same sentence under two models);
    both are `(n, d)` with `n >= 1`.
    """
    _check_pair(ref, test)
    if ref.shape[0] < 1:
        raise ValueError("mean_cosine needs at least one row")
    cos = (_unit_rows(ref) * _unit_rows(test)).sum(dim=1)
    return float(cos.mean()), float(cos.min())
