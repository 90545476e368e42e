"""64 calibration sentences for weight-only quantization of sentence encoders (GPTQ, AWQ): the
8 of `demo.zoo.sentences.CALIBRATION` and 56 more, written for this project, on the same kinds
of topics as `SENTENCES` but none of them in it — calibration stays apart from evaluation."""

from __future__ import annotations

from demo.zoo.sentences import CALIBRATION

_MORE: tuple[str, ...] = (
    "Knead the dough for ten minutes, then leave it to rise somewhere warm.",
    "The goalkeeper saved a penalty in the last minute of extra time.",
    "Interest rates were left unchanged at the central bank's meeting on Thursday.",
    "Drink plenty of water and rest if you have a mild fever.",
    "The function returns None when the list is empty, which caused the crash.",
    "We missed the last ferry and had to spend the night in the harbour town.",
    "Thick fog closed the airport for most of the morning.",
    "The orchestra tuned up while the audience found their seats.",
    "A new law requires landlords to register every rental property.",
    "The castle was besieged for six months during the civil war.",
    "Octopuses can change the colour and texture of their skin in a fraction of a second.",
    "The telescope detected a faint signal from a galaxy billions of light years away.",
    "Students must hand in their essays before the end of the term.",
    "The hybrid engine switches to electric power at low speeds.",
    "Prune the roses in late winter, just before new growth appears.",
    "The documentary follows three families through a year of drought.",
    "Why does bread go stale faster in the fridge than on the counter?",
    "He twisted his ankle on the first lap and had to withdraw from the race.",
    "The startup raised four million euros in its first funding round.",
    "Wash your hands before touching a wound to avoid infection.",
    "Use a dictionary instead of a long chain of if statements.",
    "The hostel had clean rooms, a shared kitchen and a view of the old bridge.",
    "Strong winds are expected along the coast tonight, with gusts up to 90 km/h.",
    "She plays the cello in a string quartet that meets every Tuesday.",
    "The jury could not reach a unanimous verdict.",
    "Ancient Romans built aqueducts that carried water across entire valleys.",
    "Penguins huddle together to survive the Antarctic winter.",
    "Astronauts on the station exercise two hours a day to keep their bones strong.",
    "The school library lends laptops to pupils who have none at home.",
    "Check the tyre pressure before a long drive on the motorway.",
    "Tomatoes need full sun and regular watering to ripen well.",
    "The sequel was longer, louder and far less interesting than the original film.",
    "I never drink coffee after four in the afternoon.",
    "The marathon route passes the cathedral and follows the river for five kilometres.",
    "Shares in the airline fell sharply after it cut its profit forecast.",
    "Her blood pressure returned to normal after she changed her diet.",
    "Always back up the database before you run a migration.",
    "Our flight to Lisbon was cancelled because of a strike by air traffic controllers.",
    "It snowed in April for the first time in twenty years.",
    "The band recorded their second album in a farmhouse in Wales.",
    "Can a tenant be evicted without a written notice?",
    "The treaty ended a war that had lasted almost thirty years.",
    "Bees communicate the direction of flowers with a waggle dance.",
    "A solar eclipse will be visible across northern Spain next August.",
    "Learning a second language is easier for children than for adults.",
    "The mechanic replaced the brake pads and the timing belt.",
    "Cover the seedlings at night if frost is forecast.",
    "The actor won an award for his role as a retired detective.",
    "How many grams of sugar are in a tablespoon of honey?",
    "The cyclist crossed the finish line with her arms raised.",
    "Inflation eased for the third month in a row.",
    "A course of antibiotics should be finished even when you feel better.",
    "The compiler warns about unused variables but still builds the program.",
    "We hiked along the ridge until the clouds rolled in.",
    "The museum is closed on Mondays and on public holidays.",
    "My neighbour's cat sleeps on our doormat every afternoon.",
)

CALIBRATION_64: tuple[str, ...] = CALIBRATION + _MORE

__all__ = ["CALIBRATION_64"]
